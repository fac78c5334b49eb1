"""The Gradio app (``anytext2-app``, ``examples/gradio_app.py``): generation and editing in the browser.

``inference`` (request checks and the pipeline call) and ``model`` (what is loaded) work without Gradio;
``ui`` builds the page and needs the ``app`` extra.
"""
