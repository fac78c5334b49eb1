"""Key names and shapes of the reference AnyText2 model (ldm layout), generated from its yaml config.

Written from the structure of the reference's ``openaimodel.UNetModel``, ``cldm.ControlNet`` and ldm's
VAE ``Encoder``/``Decoder``: used to invert diffusers' converters (``--to_original``) and to report key
coverage. Parts whose keys are the same in both layouts (CLIP, text embedding, OCR) are not listed here.
"""

from __future__ import annotations

Shape = tuple[int, ...]


def _norm(out: dict, prefix: str, ch: int) -> None:
    out[f"{prefix}.weight"] = (ch,)
    out[f"{prefix}.bias"] = (ch,)


def _conv(out: dict, prefix: str, cin: int, cout: int, k: int = 3) -> None:
    out[f"{prefix}.weight"] = (cout, cin, k, k)
    out[f"{prefix}.bias"] = (cout,)


def _linear(out: dict, prefix: str, cin: int, cout: int, bias: bool = True) -> None:
    out[f"{prefix}.weight"] = (cout, cin)
    if bias:
        out[f"{prefix}.bias"] = (cout,)


def _resblock(out: dict, prefix: str, cin: int, cout: int, temb: int) -> None:
    _norm(out, f"{prefix}.in_layers.0", cin)
    _conv(out, f"{prefix}.in_layers.2", cin, cout)
    _linear(out, f"{prefix}.emb_layers.1", temb, cout)
    _norm(out, f"{prefix}.out_layers.0", cout)
    _conv(out, f"{prefix}.out_layers.3", cout, cout)
    if cin != cout:
        _conv(out, f"{prefix}.skip_connection", cin, cout, 1)


def _attention(out: dict, prefix: str, dim: int, context: int) -> None:
    _linear(out, f"{prefix}.to_q", dim, dim, bias=False)
    _linear(out, f"{prefix}.to_k", context, dim, bias=False)
    _linear(out, f"{prefix}.to_v", context, dim, bias=False)
    _linear(out, f"{prefix}.to_out.0", dim, dim)


def _spatial_transformer(out: dict, prefix: str, ch: int, context: int, depth: int, attnx: bool, linear: bool):
    _norm(out, f"{prefix}.norm", ch)
    if linear:
        _linear(out, f"{prefix}.proj_in", ch, ch)
    else:
        _conv(out, f"{prefix}.proj_in", ch, ch, 1)
    for d in range(depth):
        block = f"{prefix}.transformer_blocks.{d}"
        _attention(out, f"{block}.attn1", ch, ch)
        _linear(out, f"{block}.ff.net.0.proj", ch, ch * 8)
        _linear(out, f"{block}.ff.net.2", ch * 4, ch)
        _attention(out, f"{block}.attn2", ch, context)
        if attnx:
            _attention(out, f"{block}.attn1x", ch, ch)
            _attention(out, f"{block}.attn2x", ch, context)
        for n in (1, 2, 3):
            _norm(out, f"{block}.norm{n}", ch)
    if linear:
        _linear(out, f"{prefix}.proj_out", ch, ch)
    else:
        _conv(out, f"{prefix}.proj_out", ch, ch, 1)


def _levels(params: dict) -> tuple[int, list[int], int, set[int], int, int]:
    mc = int(params["model_channels"])
    mult = [int(m) for m in params["channel_mult"]]
    nrb = int(params["num_res_blocks"])
    attn_res = {int(a) for a in params["attention_resolutions"]}
    context = int(params["context_dim"])
    depth = int(params.get("transformer_depth", 1))
    return mc, mult, nrb, attn_res, context, depth


def _encoder(out: dict, prefix: str, params: dict, attnx: bool, zero_convs: bool) -> list[int]:
    """input_blocks (+ zero_convs for the ControlNet) and middle_block; returns the skip channels."""
    mc, mult, nrb, attn_res, context, depth = _levels(params)
    linear = bool(params.get("use_linear_in_transformer", False))
    temb = mc * 4
    _linear(out, f"{prefix}time_embed.0", mc, temb)
    _linear(out, f"{prefix}time_embed.2", temb, temb)
    _conv(out, f"{prefix}input_blocks.0.0", int(params["in_channels"]), mc)
    if zero_convs:
        _conv(out, f"{prefix}zero_convs.0.0", mc, mc, 1)
    chans, ch, ds, index = [mc], mc, 1, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            _resblock(out, f"{prefix}input_blocks.{index}.0", ch, m * mc, temb)
            ch = m * mc
            if ds in attn_res:
                _spatial_transformer(out, f"{prefix}input_blocks.{index}.1", ch, context, depth, attnx, linear)
            if zero_convs:
                _conv(out, f"{prefix}zero_convs.{index}.0", ch, ch, 1)
            chans.append(ch)
            index += 1
        if level != len(mult) - 1:
            _conv(out, f"{prefix}input_blocks.{index}.0.op", ch, ch)
            if zero_convs:
                _conv(out, f"{prefix}zero_convs.{index}.0", ch, ch, 1)
            chans.append(ch)
            index += 1
            ds *= 2
    return chans


def _middle(out: dict, prefix: str, params: dict, ch: int, attnx: bool) -> None:
    mc, _, _, _, context, depth = _levels(params)
    linear = bool(params.get("use_linear_in_transformer", False))
    _resblock(out, f"{prefix}middle_block.0", ch, ch, mc * 4)
    _spatial_transformer(out, f"{prefix}middle_block.1", ch, context, depth, attnx, linear)
    _resblock(out, f"{prefix}middle_block.2", ch, ch, mc * 4)


def unet_layout(params: dict, prefix: str = "model.diffusion_model.") -> dict[str, Shape]:
    """ControlledUnetModel keys, with attn1x/attn2x where the AttnX flags put them."""
    out: dict[str, Shape] = {}
    mc, mult, nrb, attn_res, context, depth = _levels(params)
    linear = bool(params.get("use_linear_in_transformer", False))
    chans = _encoder(out, prefix, params, bool(params.get("input_attnx", False)), zero_convs=False)
    ch = mult[-1] * mc
    _middle(out, prefix, params, ch, bool(params.get("mid_attnx", False)))
    output_levels = {int(level) for level in params.get("output_attnx_level", ())}
    ds, index = 2 ** (len(mult) - 1), 0
    for level in reversed(range(len(mult))):
        for i in range(nrb + 1):
            skip = chans.pop()
            _resblock(out, f"{prefix}output_blocks.{index}.0", ch + skip, mult[level] * mc, mc * 4)
            ch = mult[level] * mc
            sub = 1
            if ds in attn_res:
                attnx = bool(params.get("output_attnx", False)) and level in output_levels
                _spatial_transformer(out, f"{prefix}output_blocks.{index}.1", ch, context, depth, attnx, linear)
                sub = 2
            if level and i == nrb:
                _conv(out, f"{prefix}output_blocks.{index}.{sub}.conv", ch, ch)
                ds //= 2
            index += 1
    _norm(out, f"{prefix}out.0", ch)
    _conv(out, f"{prefix}out.2", ch, int(params["out_channels"]))
    return out


def controlnet_layout(params: dict, prefix: str = "control_model.") -> dict[str, Shape]:
    """WriteNet keys: the ControlNet encoder plus AnyText2's glyph/position/fuse hint encoder."""
    out: dict[str, Shape] = {}
    mc, mult, *_ = _levels(params)
    glyph_in, pos_in = int(params.get("glyph_channels", 1)), int(params.get("position_channels", 1))
    glyph_plan = {1: [16, 16, 32, 32, 96, 96, 256], 2: [8, 8, 16, 16, 32, 32, 96, 96, 256]}
    cin = glyph_in
    for i, cout in enumerate(glyph_plan[int(params.get("glyph_scale", 1))]):
        _conv(out, f"{prefix}glyph_block.{2 * i}", cin, cout)
        cin = cout
    cin = pos_in
    for i, cout in enumerate([8, 8, 16, 16, 32, 32, 64]):
        _conv(out, f"{prefix}position_block.{2 * i}", cin, cout)
        cin = cout
    _conv(out, f"{prefix}fuse_block_za", 256 + 64 + 4, mc)
    _encoder(out, prefix, params, attnx=False, zero_convs=True)
    ch = mult[-1] * mc
    _middle(out, prefix, params, ch, attnx=False)
    _conv(out, f"{prefix}middle_block_out.0", ch, ch, 1)
    return out


def vae_layout(ddconfig: dict, embed_dim: int, prefix: str = "first_stage_model.") -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    ch, mult, nrb = int(ddconfig["ch"]), [int(m) for m in ddconfig["ch_mult"]], int(ddconfig["num_res_blocks"])
    z = int(ddconfig["z_channels"])

    def block(p, cin, cout):
        _norm(out, f"{p}.norm1", cin)
        _conv(out, f"{p}.conv1", cin, cout)
        _norm(out, f"{p}.norm2", cout)
        _conv(out, f"{p}.conv2", cout, cout)
        if cin != cout:
            _conv(out, f"{p}.nin_shortcut", cin, cout, 1)

    def mid(p, c):
        block(f"{p}.mid.block_1", c, c)
        _norm(out, f"{p}.mid.attn_1.norm", c)
        for name in ("q", "k", "v", "proj_out"):
            _conv(out, f"{p}.mid.attn_1.{name}", c, c, 1)
        block(f"{p}.mid.block_2", c, c)

    enc = f"{prefix}encoder"
    _conv(out, f"{enc}.conv_in", int(ddconfig["in_channels"]), ch)
    cin = ch
    for level, m in enumerate(mult):
        for j in range(nrb):
            block(f"{enc}.down.{level}.block.{j}", cin, ch * m)
            cin = ch * m
        if level != len(mult) - 1:
            _conv(out, f"{enc}.down.{level}.downsample.conv", cin, cin)
    mid(enc, cin)
    _norm(out, f"{enc}.norm_out", cin)
    _conv(out, f"{enc}.conv_out", cin, 2 * z if ddconfig.get("double_z", True) else z)

    dec = f"{prefix}decoder"
    cin = ch * mult[-1]
    _conv(out, f"{dec}.conv_in", z, cin)
    mid(dec, cin)
    for level in reversed(range(len(mult))):
        for j in range(nrb + 1):
            block(f"{dec}.up.{level}.block.{j}", cin, ch * mult[level])
            cin = ch * mult[level]
        if level != 0:
            _conv(out, f"{dec}.up.{level}.upsample.conv", cin, cin)
    _norm(out, f"{dec}.norm_out", cin)
    _conv(out, f"{dec}.conv_out", cin, int(ddconfig["out_ch"]))
    _conv(out, f"{prefix}quant_conv", 2 * z, 2 * embed_dim, 1)
    _conv(out, f"{prefix}post_quant_conv", embed_dim, z, 1)
    return out


def diffusion_layout(original_config: dict) -> dict[str, Shape]:
    """UNet + WriteNet + VAE keys of the reference ControlLDM described by ``original_config``."""
    params = original_config["model"]["params"]
    vae = params["first_stage_config"]["params"]
    layout = unet_layout(params["unet_config"]["params"])
    layout.update(controlnet_layout(params["control_stage_config"]["params"]))
    layout.update(vae_layout(vae["ddconfig"], int(vae["embed_dim"])))
    return layout
