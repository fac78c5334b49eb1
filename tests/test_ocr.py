"""PP-OCRv3 recognizer: real (ONNX-converted) weights, reading, cropping, losses, save/load."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from anytext2_diffusers.models.ocr import (
    OCRConversionError,
    PPOCRRecognizer,
    convert_onnx,
    crop_line_by_mask,
    crop_line_by_polygon,
    ctc_greedy_decode,
    default_onnx_path,
    load_anytext2_ocr_state_dict,
    load_character_list,
    paddle_resize_norm,
    prepare_crops,
    read_state_dict_file,
    recognize_crops,
    recognizer_from_anytext2,
    resize_norm_crop,
    texts_to_labels,
    umeyama_similarity,
)
from anytext2_diffusers.models.ocr import convert as convert_mod
from anytext2_diffusers.training.losses import (
    ctc_loss_per_line,
    mean_per_sample,
    ocr_line_losses,
    ocr_perceptual_loss_per_line,
)

FONT_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "src/anytext2_diffusers/assets/fonts"
LATIN_FONTS = ("NotoSans-Regular.ttf", "DejaVuSans.ttf")
CHINESE_FONTS = ("NotoSansSC-Subset.otf", "WenQuanYiMicroHei-Subset.ttf")
LATIN = [
    "hello",
    "world",
    "diffusers",
    "AnyText2",
    "open source",
    "Stable Diffusion",
    "coffee shop",
    "Happy Birthday",
    "SALE 50%",
    "Welcome",
    "New York",
    "text 2024",
    "machine learning",
    "Good Morning",
    "OPEN",
    "Hugging Face",
    "pizza",
    "London Bridge",
    "Fresh Bread",
    "Summer Party",
    "No Parking",
    "ok",
]
CHINESE = [
    "你好",
    "世界",
    "北京欢迎你",
    "人工智能",
    "中国银行",
    "生日快乐",
    "新年快乐",
    "咖啡店",
    "欢迎光临",
    "开放源代码",
    "深度学习",
    "上海",
    "春天来了",
    "图书馆",
    "火锅",
    "天气很好",
    "学习中文",
    "山水画",
    "电影院",
    "大家好",
]


def render_line(text: str, font_file: str, size: int = 40, margin=(6, 4)) -> Image.Image:
    font = ImageFont.truetype(str(FONT_DIR / font_file), size)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("RGB", (right - left + 2 * margin[0], bottom - top + 2 * margin[1]), (255, 255, 255))
    ImageDraw.Draw(img).text((margin[0] - left, margin[1] - top), text, font=font, fill=(0, 0, 0))
    return img


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The rapidocr ONNX converted once per session, and its save_pretrained folder."""
    recognizer = convert_onnx()
    folder = tmp_path_factory.mktemp("ppocrv3")
    recognizer.save_pretrained(folder)
    return recognizer, folder


def _onnx_session(expose_logits: bool):
    import onnx

    model = onnx.load(str(default_onnx_path()))
    if expose_logits:  # the export ends in Softmax: also return its input, the logits
        softmax = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
        assert softmax.op_type == "Softmax"
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(softmax.input[0]))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("width", [320, 200])
def test_converted_logits_match_onnxruntime(converted, width):
    recognizer, _ = converted
    x = torch.rand(2, 3, 48, width, generator=torch.Generator().manual_seed(width)) * 2 - 1
    probs_ort, logits_ort = _onnx_session(True).run(None, {"x": x.numpy()})
    with torch.no_grad():
        out = recognizer(x)
    assert out.logits.shape == (2, width // 8, 6625) and out.neck.shape == (2, width // 8, 64)
    assert np.abs(out.logits.numpy() - logits_ort).max() <= 1e-4
    assert np.abs(out.logits.softmax(-1).numpy() - probs_ort).max() <= 1e-4


def test_character_table_from_onnx_metadata(converted):
    recognizer, _ = converted
    chars = recognizer.characters
    assert len(chars) == 6625 and chars[0] == "sos" and chars[-1] == " "
    assert chars == load_character_list()  # the shipped dictionary is the same table
    assert "中" in chars and "A" in chars


def test_reads_rendered_words_in_two_fonts(converted):
    recognizer, _ = converted
    crops, truth = [], []
    for fonts, words in ((LATIN_FONTS, LATIN), (CHINESE_FONTS, CHINESE)):
        for font in fonts:
            for word in words:
                crops.append(render_line(word, font))
                truth.append(word)
    assert len(set(truth)) >= 40 and all(2 <= len(t) <= 20 for t in truth)
    # Mixed inputs: PIL images and uint8 arrays.
    crops = [c if i % 2 else np.asarray(c) for i, c in enumerate(crops)]
    predicted = recognizer.read(crops)
    wrong = [(t, p) for t, p in zip(truth, predicted) if t != p]
    assert len(wrong) <= 0.05 * len(truth), wrong


def _line_in_rotated_polygon(text, angle_deg, center=(256, 240)):
    """A 512x512 RGB image with ``text`` rotated by ``angle_deg`` and the rotated text box polygon."""
    line = np.asarray(render_line(text, LATIN_FONTS[0], size=44, margin=(8, 6)))
    h, w = line.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, 1.0)
    rot[:, 2] += np.array(center) - np.array([w / 2, h / 2])
    canvas = np.full((512, 512, 3), (90, 140, 200), np.uint8)
    warped = cv2.warpAffine(line, rot, (512, 512), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    inside = cv2.warpAffine(np.full((h, w), 255, np.uint8), rot, (512, 512), flags=cv2.INTER_NEAREST)
    canvas[inside > 0] = warped[inside > 0]
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    polygon = corners @ rot[:, :2].T + rot[:, 2]
    return canvas, polygon


def test_rotated_line_is_cropped_upright_and_read(converted):
    recognizer, _ = converted
    text = "Rotated line"
    image, polygon = _line_in_rotated_polygon(text, angle_deg=18)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float()
    mask = np.zeros((512, 512), np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 255)
    by_mask = crop_line_by_mask(tensor, mask)
    by_poly = crop_line_by_polygon(tensor, polygon)
    for crop in (by_mask, by_poly):
        assert crop.shape[1] < crop.shape[2]  # upright: wider than tall
        assert 0 <= crop.min() and crop.max() <= 255
    assert recognizer.read([by_mask, by_poly]) == [text, text]
    # Without rectification (axis-aligned bounding box) the same line is not read correctly.
    x0, y0 = polygon.min(0).astype(int)
    x1, y1 = polygon.max(0).astype(int)
    assert recognizer.read([tensor[:, y0:y1, x0:x1]]) != [text]


def test_ocr_loss_gradient_reaches_the_image(converted):
    recognizer, _ = converted
    image, polygon = _line_in_rotated_polygon("gradient", angle_deg=-12)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().requires_grad_(True)
    mask = np.zeros((512, 512), np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 255)
    crop = crop_line_by_mask(tensor, mask)
    out = recognize_crops(recognizer, [crop, crop.detach().flip(-1)])
    loss = ctc_loss_per_line(out.logits, ["gradient", "gradient"], recognizer.characters).sum()
    loss = loss + ocr_perceptual_loss_per_line(out.neck[:1], out.neck[1:].detach()).sum()
    loss.backward()
    grad = tensor.grad.abs().sum(0).numpy()
    assert np.isfinite(grad).all() and grad[mask > 0].sum() > 0
    far = np.ones_like(mask, bool)
    far[
        int(polygon[:, 1].min()) - 5 : int(polygon[:, 1].max()) + 5,
        int(polygon[:, 0].min()) - 5 : int(polygon[:, 0].max()) + 5,
    ] = False
    assert grad[far].sum() == 0


def test_save_pretrained_round_trip_offline(converted, monkeypatch):
    recognizer, folder = converted
    assert (folder / "diffusion_pytorch_model.safetensors").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = PPOCRRecognizer.from_pretrained(folder).eval()
    assert loaded.characters == recognizer.characters
    for k, v in recognizer.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.rand(1, 3, 48, 320, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(recognizer(x).logits, loaded(x).logits)


def test_console_script_main_writes_a_loadable_folder(tmp_path):
    convert_mod.main(["--output_dir", str(tmp_path / "out"), "--onnx", str(default_onnx_path())])
    assert PPOCRRecognizer.from_pretrained(tmp_path / "out").config.num_classes == 6625


def test_onnx_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(OCRConversionError, match="broken.onnx"):
        convert_onnx(bad)
    with pytest.raises(OCRConversionError, match="missing.onnx"):
        convert_onnx(tmp_path / "missing.onnx")


def test_anytext2_state_dict_loading_is_strict(converted, tmp_path):
    recognizer, _ = converted
    full = {f"text_predictor.{k}": v.half() for k, v in recognizer.state_dict().items()}
    full["model.other.weight"] = torch.zeros(1)
    # A ppv3_rec.pth-style file loads with weights_only=True; fp16 is upcast to the model's float32.
    path = tmp_path / "ppv3_rec.pth"
    torch.save({k[len("text_predictor.") :]: v for k, v in full.items() if k.startswith("text_predictor.")}, path)
    from_pth = recognizer_from_anytext2(path)
    assert from_pth.dtype == torch.float32 and from_pth.characters == recognizer.characters
    assert torch.equal(from_pth.head.fc.weight, recognizer.head.fc.weight.half().float())
    assert read_state_dict_file(path).keys() == recognizer.state_dict().keys()
    load_anytext2_ocr_state_dict(PPOCRRecognizer(), full, prefix="text_predictor.")

    missing = dict(full)
    del missing["text_predictor.neck.encoder.conv1.norm.running_var"]
    with pytest.raises(OCRConversionError, match=r"text_predictor\.neck\.encoder\.conv1\.norm\.running_var"):
        load_anytext2_ocr_state_dict(PPOCRRecognizer(), missing, prefix="text_predictor.")
    extra = dict(full, **{"text_predictor.head.fc2.weight": torch.zeros(2)})
    with pytest.raises(OCRConversionError, match=r"unexpected.*head\.fc2\.weight"):
        load_anytext2_ocr_state_dict(PPOCRRecognizer(), extra, prefix="text_predictor.")
    wrong = dict(full, **{"text_predictor.head.fc.bias": torch.zeros(97)})
    with pytest.raises(OCRConversionError, match=r"head\.fc\.bias: \(97,\)"):
        load_anytext2_ocr_state_dict(PPOCRRecognizer(), wrong, prefix="text_predictor.")
    with pytest.raises(OCRConversionError, match="no keys start with 'font_predictor.'"):
        load_anytext2_ocr_state_dict(PPOCRRecognizer(), full, prefix="font_predictor.")


def test_preprocessing_matches_anytext2_rules():
    # A glyph line (80x512) becomes ceil(48 * 6.4) = 308 columns, then zero padding to 320.
    line = torch.full((3, 80, 512), 255.0)
    out = resize_norm_crop(line)
    assert out.shape == (3, 48, 320)
    assert torch.allclose(out[:, :, :308], torch.ones(3, 48, 308)) and (out[:, :, 308:] == 0).all()
    # Lines wider than 320/48 are squeezed to the canvas width.
    assert (resize_norm_crop(torch.zeros(3, 10, 1000)) == -1).all()
    # Vertical crops (h > 1.2 w) are turned 90 degrees counter-clockwise: the top row becomes the left column.
    tall = torch.zeros(3, 120, 50)
    tall[:, :10, :] = 255.0
    batch = prepare_crops([tall])
    assert batch.shape == (1, 3, 48, 320)
    # rotated to 50x120 -> 48 x ceil(48 * 2.4) = 116 columns: bright start, dark rest, zero padding
    assert batch[0, :, :, :2].mean() > 0.9 and batch[0, :, :, 10:116].mean() < -0.9
    assert (batch[0, :, :, 116:] == 0).all()
    # Differentiable w.r.t. the crop.
    crop = torch.rand(3, 30, 90, requires_grad=True)
    prepare_crops([crop]).sum().backward()
    assert crop.grad is not None and crop.grad.abs().sum() > 0


def test_paddle_inference_input_matches_a_hand_computed_resize_normalise_pad():
    # A 2 x 3 crop into a height-4, width-8 canvas: ratio 1.5 -> ceil(4 * 1.5) = 6 columns, canvas
    # int(4 * max(8 / 4, 1.5)) = 8. cv2's bilinear (pixel centres, edge clamped) doubles each axis with
    # weights 1, 3/4-1/4, 1/4-3/4, ..., 1; multiples of 16 keep its 8-bit result exact.
    crop = np.array([[16, 64, 160], [240, 128, 32]], dtype=np.uint8)
    crop = np.stack([crop, crop // 2 // 16 * 16, 240 - crop], axis=2)  # (2, 3, 3), multiples of 16
    wy = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    wx = np.array([[1, 0, 0], [0.75, 0.25, 0], [0.25, 0.75, 0], [0, 0.75, 0.25], [0, 0.25, 0.75], [0, 0, 1]])
    expected = np.zeros((3, 4, 8), dtype=np.float32)
    for c in range(3):
        resized = np.round(wy @ crop[:, :, c].astype(np.float64) @ wx.T)
        expected[c, :, :6] = (resized / 255 - 0.5) / 0.5
    out = paddle_resize_norm(crop, image_height=4, image_width=8)
    assert out.dtype == np.float32 and out.shape == (3, 4, 8)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert (out[:, :, 6:] == 0).all()
    # A crop wider than the canvas ratio widens the canvas to its own width (no squeeze, no padding).
    wide = np.full((2, 40, 3), 255, dtype=np.uint8)
    assert paddle_resize_norm(wide, image_height=4, image_width=8).shape == (3, 4, 80)
    with pytest.raises(ValueError, match="uint8"):
        paddle_resize_norm(crop.astype(np.float32))


def test_recognize_crops_restores_input_order(converted):
    recognizer, _ = converted
    crops = [
        torch.rand(3, h, w, generator=torch.Generator().manual_seed(h)) * 255
        for h, w in ((40, 300), (40, 50), (90, 60))
    ]
    out = recognize_crops(recognizer, crops, batch_size=2)
    assert out.order.tolist() == [2, 1, 0]
    with torch.no_grad():
        single = torch.stack([recognizer(prepare_crops([c])).neck[0] for c in crops])
    # A batch of 2 takes other conv/matmul kernel blockings than one row: measured max|batched - single| up to
    # 1.6e-6 x max|single| (1.47e-5 here, 2.2e-5 reported on a busy 2-core box; 1/2/4 threads, batch 2/3/6,
    # benchmarks/ocr_batch_spread.py); 1e-5 relative keeps a 4x margin. Swapped rows differ by > 4.
    diff = (out.neck - single).abs().max().item()
    assert diff <= 1e-5 * max(1.0, single.abs().max().item()), diff


def test_greedy_decode_collapses_repeats_and_drops_blank():
    chars = ["sos", "a", "b", " "]
    steps = [[1, 1, 0, 1, 2, 2, 0, 0, 3, 1], [0] * 10]
    logits = torch.full((2, 10, 4), -5.0)
    for n, row in enumerate(steps):
        for t, c in enumerate(row):
            logits[n, t, c] = 5.0
    assert ctc_greedy_decode(logits, chars) == ["aab a", ""]


def test_ctc_loss_matches_anytext2_normalisation():
    chars = ["sos", "a", "b", " "]
    targets, lengths = texts_to_labels(["ab", "a?"], chars)
    assert targets.tolist() == [1, 2, 1, 3] and lengths.tolist() == [2, 2]  # unknown '?' -> last class
    logits = torch.randn(2, 40, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = ctc_loss_per_line(logits, ["ab", "a?"], chars, weights=[1.0, 0.5])
    expected = (
        torch.nn.CTCLoss(reduction="none")(
            logits.log_softmax(2).permute(1, 0, 2), targets, torch.tensor([40, 40]), lengths
        )
        / 40
        * torch.tensor([1.0, 0.5])
    )
    assert loss.shape == (2,) and torch.allclose(loss, expected)
    loss.sum().backward()
    assert logits.grad.abs().sum() > 0
    assert torch.allclose(mean_per_sample(loss, [2, 0]), torch.stack([loss.mean(), torch.tensor(0.0)]))
    with pytest.raises(ValueError, match="n_lines"):
        mean_per_sample(loss, [1])


def test_umeyama_recovers_a_similarity():
    angle, scale, shift = math.radians(25), 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    src = np.array([[0, 0], [10, 1], [7, 9], [-3, 4]], float)
    dst = src @ rot.T + shift
    m = umeyama_similarity(src, dst)
    assert np.allclose(m[:2, :2], rot) and np.allclose(m[:2, 2], shift) and np.allclose(m[2], [0, 0, 1])


def test_ocr_line_losses_from_images(converted):
    recognizer, _ = converted
    image, polygon = _line_in_rotated_polygon("hello", angle_deg=10)
    mask = np.zeros((1, 2, 512, 512), np.uint8)  # sample 0 has one line, the padded second is unused
    cv2.fillPoly(mask[0, 0], [np.round(polygon).astype(np.int32)], 255)
    original = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    decoded = (original + 40 * torch.randn(original.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255)
    decoded.requires_grad_(True)
    losses = ocr_line_losses(recognizer, decoded, original, mask, [1], ["hello"], ["Latin"], latin_weight=0.5)
    assert losses.weights.tolist() == [0.5] and losses.perceptual.shape == (1,) and losses.ctc.shape == (1,)
    assert losses.perceptual.item() > 0 and torch.isfinite(losses.ctc).all()
    (losses.perceptual + losses.ctc).sum().backward()
    assert decoded.grad.abs().sum() > 0
    same = ocr_line_losses(recognizer, original, original, mask, [1], ["hello"], ["Chinese"])
    assert same.perceptual.item() == 0 and same.weights.tolist() == [1.0]
    wrong = ocr_line_losses(recognizer, original, original, mask, [1], ["world"], ["Chinese"])
    assert wrong.ctc.item() > 10 * same.ctc.item()  # the CTC loss tells the right text from a wrong one


def test_train_mode_matches_the_reference_style_encoder_behaviour():
    """AnyText2 trains its font predictor in train mode: batch-statistics BatchNorm and active dropout."""
    model = PPOCRRecognizer().train()
    x = torch.rand(2, 3, 48, 320, generator=torch.Generator().manual_seed(0)) * 2 - 1
    before = model.backbone.conv1._batch_norm.running_mean.clone()
    torch.manual_seed(0)
    a = model(x).neck
    torch.manual_seed(1)
    b = model(x).neck
    assert not torch.equal(a, b)  # dropout in the SVTR neck
    assert not torch.equal(before, model.backbone.conv1._batch_norm.running_mean)
    a.sum().backward()
    assert model.backbone.conv1._conv.weight.grad.abs().sum() > 0  # use_guide does not stop gradients
