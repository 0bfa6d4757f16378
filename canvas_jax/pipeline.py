"""The Python API: ``Pipeline.from_pretrained(path)(prompt)`` for text-to-image, img2img, inpainting, outpainting.

    pipe = canvas_jax.Pipeline.from_pretrained("sd15/")     # a diffusers folder, our converted folder, or a
                                                             # `canvas-jax train` run folder (runs/shapes_tiny)
    out = pipe("a cozy reading nook", num_steps=25, guidance_scale=7.5, sampler="dpmpp_2m", seed=0)
    out.images                                               # PIL images ("np": NHWC float32 in [0, 1])

Text encoding, the whole sampling loop and the VAE decode run as ONE jitted program (:func:`_generate`),
compiled once per (model structure, shapes, sampler, steps, task) and cached across calls and pipelines.
The conditioning follows diffusers' pipelines: SD 1.x / 2.x condition on the text encoder's last hidden
state (SD 2's encoder is already truncated); SDXL on both encoders' penultimate states concatenated, with
the second encoder's projected pooled output and ``time_ids = (H, W, 0, 0, H, W)`` as added conditions, and
all-zero negative conditioning when no negative prompt is given (``force_zeros_for_empty_prompt``). Our
MiniLM/BERT-conditioned pipelines condition on ``bert(ids, attention_mask).last_hidden_state`` as in training.
Image latents are the posterior mode of the VAE (diffusers samples it; the spread is tiny for trained VAEs).
With several devices the batch is sharded over the mesh's ``data`` axis (padded to a multiple of it); with
several processes (``jax.distributed``) every process calls the pipeline with the same arguments, and each
gets all the images.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from canvas_jax import images as imgs
from canvas_jax.components import Components, detect_format, load_components
from canvas_jax.convert.clip_vision import load_clip_vision
from canvas_jax.convert.ip_adapter import WEIGHT_NAME as IP_WEIGHT_NAME
from canvas_jax.convert.ip_adapter import load_ip_adapter
from canvas_jax.convert.lora import load_lora
from canvas_jax.diffusion import Schedule, cfg_from_batch, inpaint_blend, sample, strength_to_start_step
from canvas_jax.errors import InputError
from core_jax.text.bert import BertModel
from canvas_jax.models.ip_adapter import cross_attention_layers, remove_ip_adapter, set_ip_adapter_scale
from canvas_jax.models.lora import merge_lora, set_lora_scale, unmerge_lora
from canvas_jax.runs import run_components
from core_jax.mesh import MeshConfig, batch_spec, make_mesh

OUTPUT_TYPES = ("pil", "np", "latent")
FILLS = ("edge", "noise")


@dataclasses.dataclass
class PipelineOutput:
    """``images``: a list of PIL images, an NHWC float32 array in [0, 1] (``output_type="np"``), or the final
    NCHW latents (``output_type="latent"``, scaled like diffusers' latents). With ``return_log_probs=True``:
    ``log_probs`` ``[B, steps]`` float32, each sampler step's log-density under the (guided) model that took it,
    and ``trajectory`` ``[B, steps + 1, C, h, w]``, the sampler states it went through (see
    :class:`canvas_jax.diffusion.Trajectory`)."""

    images: Any
    log_probs: np.ndarray | None = None
    trajectory: np.ndarray | None = None


class _Graphs:
    """The models' GraphDefs as a static jit argument: equal (and hashing alike) when the model configs and
    graph structures are (GraphDefs themselves do not hash: the models keep their config dicts)."""

    def __init__(self, graphdefs: dict[str, Any], key: str):
        self.graphdefs, self.key = graphdefs, key

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Graphs) and other.key == self.key


class _Static(NamedTuple):
    """Everything that shapes the compiled program besides array shapes."""

    graphs: _Graphs
    sched: Schedule
    sampler: str
    num_steps: int
    start_step: int
    eta: float
    use_karras_sigmas: bool | None
    guided: bool
    guidance_rescale: float
    task: str  # "txt2img" | "img2img" | "inpaint"
    from_image: bool  # start from the noised image latents (img2img, inpainting with strength < 1)
    keep_unmasked: bool
    zero_negative: bool
    sdxl: bool
    decode: bool
    log_probs: bool = False


def _encode_text(st: _Static, m: dict, ids, ids2, attn, guided: bool):
    """(context [B', T, D], pooled [B', P] or None); B' = 2B as [uncond; cond] when guided. A BERT encoder
    (``attn`` = its attention mask) is called as in training: ``encoder(ids, attn).last_hidden_state``."""
    if isinstance(m["text_encoder"], BertModel):
        ctx = m["text_encoder"](ids, attn).last_hidden_state
        pooled = None
    elif not st.sdxl:
        ctx = m["text_encoder"](ids).last_hidden_state
        pooled = None
    else:
        o1, o2 = m["text_encoder"](ids), m["text_encoder_2"](ids2)
        ctx = jnp.concatenate([o1.hidden_states[-2], o2.hidden_states[-2]], axis=-1)
        pooled = o2.text_embeds
    if guided and st.zero_negative:  # the ids held only the prompts: prepend zero negatives
        ctx = jnp.concatenate([jnp.zeros_like(ctx), ctx])
        pooled = None if pooled is None else jnp.concatenate([jnp.zeros_like(pooled), pooled])
    return ctx, pooled


def _generate_impl(st: _Static, states: dict, inputs: dict) -> jax.Array | dict:
    m = {name: nnx.merge(st.graphs.graphdefs[name], state) for name, state in states.items()}
    unet, vae = m["unet"], m["vae"]
    sf, shift = vae.scaling_factor, vae.shift_factor
    noise, mask = inputs["noise"], None
    ctx, pooled = _encode_text(st, m, inputs["ids"], inputs.get("ids2"), inputs.get("attn"), st.guided)
    # IP-Adapter image tokens, projected once for the whole loop ([uncond; cond] rows like the text)
    ip_tokens = unet.ip_adapter(inputs["ip_embeds"]) if "ip_embeds" in inputs else None
    added = None
    if st.sdxl:
        time_ids = inputs["time_ids"]
        added = {"text_embeds": pooled, "time_ids": jnp.concatenate([time_ids] * 2) if st.guided else time_ids}

    init_latents = blend = extra = None
    if st.task != "txt2img":
        image = inputs["image"] * 2.0 - 1.0
        image_latents = (vae.encode(image).mode() - shift) * sf
        init_latents = image_latents if st.from_image else None
    if st.task == "inpaint":
        mask = (inputs["mask"] >= 0.5).astype(jnp.float32)
        f = image.shape[1] // noise.shape[1]
        mask_latents = mask[:, ::f, ::f, :]
        if unet.config["in_channels"] == 2 * noise.shape[-1] + 1:  # an inpainting UNet
            masked = (vae.encode(image * (mask < 0.5)).mode() - shift) * sf
            extra = jnp.concatenate([mask_latents, masked], axis=-1)
            extra = jnp.concatenate([extra] * 2) if st.guided else extra
        else:
            blend = inpaint_blend(image_latents, mask_latents, noise)

    def model_fn(x, t):
        x_in = jnp.concatenate([x] * 2) if st.guided else x
        if extra is not None:
            x_in = jnp.concatenate([x_in, extra.astype(x_in.dtype)], axis=-1)
        out = unet(x_in, t, ctx, added, ip_tokens=ip_tokens)
        return cfg_from_batch(out, inputs["guidance_scale"], st.guidance_rescale) if st.guided else out

    latents = sample(model_fn, noise, st.sched, sampler=st.sampler, num_steps=st.num_steps, rng=inputs["rng"],
                     eta=st.eta, use_karras_sigmas=st.use_karras_sigmas, start_step=st.start_step,
                     init_latents=init_latents, blend_fn=blend, return_log_probs=st.log_probs)
    if st.log_probs:
        return {"images": _finish(st, vae, latents.latents, inputs, mask), "log_probs": latents.log_probs,
                "trajectory": latents.states.transpose(1, 0, 4, 2, 3)}
    return _finish(st, vae, latents, inputs, mask)


def _finish(st: _Static, vae, latents, inputs: dict, mask) -> jax.Array:
    """NCHW latents, or the decoded images NHWC in [0, 1] (the input pasted back outside an inpainting mask)."""
    sf, shift = vae.scaling_factor, vae.shift_factor
    if not st.decode:
        return latents.transpose(0, 3, 1, 2)
    out = vae.decode(latents.astype(jnp.float32) / sf + shift).astype(jnp.float32)
    out = jnp.clip(out / 2.0 + 0.5, 0.0, 1.0)
    if st.task == "inpaint" and st.keep_unmasked:
        out = mask * out + (1.0 - mask) * inputs["image"]
    return out


_generate = jax.jit(_generate_impl, static_argnums=0)


@nnx.jit
def _encode_images(encoder, pixels):
    out = encoder(pixels)
    return out.image_embeds, out.hidden_states[-2]


def _as_list(value, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"{what}: expected a string or a non-empty list of strings, got {value!r}")


class Pipeline:
    """Latent diffusion sampling with a UNet, a KL VAE and one (SD) or two (SDXL) CLIP text encoders.

    Build with :meth:`from_pretrained`, or directly from loaded :class:`~canvas_jax.components.Components`.
    ``mesh``: where to run; default: every device on a ``data`` axis when there are several, else none.
    """

    def __init__(self, components: Components, *, mesh: jax.sharding.Mesh | None = None):
        self.components = components
        self.unet, self.vae = components.unet, components.vae
        self.tokenizer, self.tokenizer_2 = components.tokenizer, components.tokenizer_2
        self.sdxl = self.unet.config.get("addition_embed_type") == "text_time"
        self.inpainting_unet = self.unet.config["in_channels"] == 2 * self.unet.config["out_channels"] + 1
        if self.sdxl and components.text_encoder_2 is None:
            raise InputError("an SDXL UNet (addition_embed_type='text_time') needs text_encoder_2 and tokenizer_2")
        self.schedule = Schedule.from_config(components.scheduler_config)
        self.force_zeros_for_empty_prompt = bool(components.model_index.get("force_zeros_for_empty_prompt", True))
        if mesh is None and jax.device_count() > 1:
            mesh = make_mesh(MeshConfig(data=-1))
        self.mesh = mesh
        self.image_encoder = None  # the IP-Adapter's CLIP vision tower (load_ip_adapter)
        self._split_models()

    def _split_models(self) -> None:
        """(Re)build the pure (graphdef, state) pairs the compiled programs run on from the live modules."""
        graphdefs, states, keys = {}, {}, {}
        for name, model in self.components.models().items():
            graphdefs[name], states[name] = nnx.split(model)
            config = model.config.to_dict() if hasattr(model.config, "to_dict") else model.config
            config = {k: v for k, v in config.items() if not k.startswith("_")}  # not meta keys: same network
            # the graph's repr covers structure and static attributes (LoRA wrapping, merged flags)
            keys[name] = [type(model).__name__, config, str(getattr(model, "dtype", None)), repr(graphdefs[name])]
        self._graphs = _Graphs(graphdefs, json.dumps(keys, sort_keys=True, default=str))
        if self.mesh is not None:
            states = jax.tree.map(lambda x: _to_mesh(x, NamedSharding(self.mesh, P())), states)
        self._states = states

    # ---- LoRA --------------------------------------------------------------------------------------------
    def load_lora_weights(self, path: str | os.PathLike, *, scale: float = 1.0) -> list[str]:
        """Load LoRA weights (safetensors with diffusers/PEFT key names) into the UNet at ``scale``;
        returns the adapted layer names. The first load recompiles once (the UNet's structure changes)."""
        names = load_lora(self.unet, path, scale=scale, freeze_base=False)
        self._split_models()
        return names

    def set_lora_scale(self, scale: float) -> None:
        """Change the LoRA scale (0 = the base model) without recompiling."""
        set_lora_scale(self.unet, scale)
        self._split_models()

    def merge_lora(self, merge: bool = True) -> None:
        """Fold the LoRA weights into the base kernels (faster sampling), or unfold them (``merge=False``)."""
        (merge_lora if merge else unmerge_lora)(self.unet)
        self._split_models()

    # ---- IP-Adapter ---------------------------------------------------------------------------------------
    def load_ip_adapter(self, path: str | os.PathLike, subfolder: str = "", weight_name: str = IP_WEIGHT_NAME, *,
                        image_encoder_folder: str | os.PathLike | None = "image_encoder", scale: float = 1.0) -> None:
        """Load IP-Adapter weights (diffusers / original format: ``image_proj.*``, ``ip_adapter.<i>.to_k_ip``...)
        from ``path/subfolder/weight_name`` (or ``path`` itself, a ``.safetensors`` file) into the UNet at
        ``scale``, and the CLIP image encoder from ``image_encoder_folder``: a name inside ``path/subfolder``, a path
        relative to ``path`` (with a "/"), or an absolute path; None: no encoder (pass ``ip_adapter_image_embeds``).
        The first load recompiles once (the UNet's structure changes)."""
        root = Path(path)
        file = root if root.suffix == ".safetensors" else root / subfolder / weight_name
        encoder = None
        if image_encoder_folder is not None:
            enc = Path(image_encoder_folder)
            if not enc.is_absolute():
                base = root.parent if root.suffix == ".safetensors" else root
                enc = base / subfolder / enc if len(enc.parts) == 1 else base / enc
            if not (enc / "config.json").is_file():
                raise InputError(f"image_encoder_folder: no CLIP image encoder (config.json + model.safetensors) in "
                                 f"{enc}; pass image_encoder_folder=None to use ip_adapter_image_embeds only")
            encoder = load_clip_vision(enc, dtype=self.unet.dtype)
        previous = self.unet.ip_adapter, {n: a.ip_adapter for n, a in cross_attention_layers(self.unet)}
        plus = load_ip_adapter(self.unet, file, scale=scale)
        if encoder is not None:
            cfg, proj = encoder.config, self.unet.ip_adapter.image_proj
            have, want = ((cfg.hidden_size, proj.proj_in.in_features) if plus
                          else (cfg.projection_dim, proj.image_embeds.in_features))
            if have != want:
                self.unet.ip_adapter = previous[0]  # leave the pipeline as it was
                for name, attn in cross_attention_layers(self.unet):
                    attn.ip_adapter = previous[1][name]
                raise InputError(f"the image encoder in {enc} gives {have}-d "
                                 f"{'hidden states' if plus else 'image_embeds'}, but the IP-Adapter {file} "
                                 f"expects {want}-d ones")
        self.image_encoder = encoder
        self._split_models()

    def set_ip_adapter_scale(self, scale) -> None:
        """Image-prompt strength: one float, or a per-block dict as diffusers takes (``{"down": {"block_2": [0.0,
        1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}}``; unnamed blocks get 0). No recompilation."""
        set_ip_adapter_scale(self.unet, scale)
        self._split_models()

    def unload_ip_adapter(self) -> None:
        """Remove the IP-Adapter (and its image encoder): the base model again."""
        remove_ip_adapter(self.unet)
        self.image_encoder = None
        self._split_models()

    def encode_image(self, image) -> tuple[np.ndarray, np.ndarray]:
        """(image embeddings, negative embeddings) of the reference image(s) as the loaded adapter reads them:
        ``image_embeds`` [n, D] and zeros (plain IP-Adapter), or the encoder's penultimate hidden states [n, T, D]
        of the images and of an all-zero image (IP-Adapter Plus), as diffusers' ``encode_image`` does."""
        if self.unet.ip_adapter is None:
            raise InputError("ip_adapter_image: no IP-Adapter is loaded; call pipe.load_ip_adapter(...) first")
        if self.image_encoder is None:
            raise InputError("ip_adapter_image: no image encoder is loaded (image_encoder_folder=None); pass "
                             "ip_adapter_image_embeds instead, or load the adapter with its image_encoder_folder")
        pixels = imgs.clip_image_inputs(image, self.image_encoder.config.image_size)
        if not self.unet.ip_adapter.plus:
            embeds, _ = _encode_images(self.image_encoder, pixels)
            embeds = np.asarray(embeds, np.float32)
            return embeds, np.zeros_like(embeds)
        _, hidden = _encode_images(self.image_encoder, np.concatenate([pixels, np.zeros_like(pixels)]))
        hidden = np.asarray(hidden, np.float32)
        return hidden[:len(pixels)], hidden[len(pixels):]

    def _ip_embeds(self, image, embeds, negative, batch: int, guided: bool) -> np.ndarray | None:
        """The ``ip_embeds`` input [B', n_images, ...] (B' = 2B, [negative; positive], when guided), or None."""
        if image is None and embeds is None:
            if self.unet.ip_adapter is not None:
                raise InputError("an IP-Adapter is loaded: pass ip_adapter_image (or ip_adapter_image_embeds), or "
                                 "call pipe.unload_ip_adapter() to sample from text alone")
            return None
        if self.unet.ip_adapter is None:
            raise InputError("ip_adapter_image / ip_adapter_image_embeds given but no IP-Adapter is loaded; call "
                             "pipe.load_ip_adapter(...) first")
        if image is not None and embeds is not None:
            raise InputError("pass ip_adapter_image or ip_adapter_image_embeds, not both")
        proj = self.unet.ip_adapter.image_proj
        plus = self.unet.ip_adapter.plus
        dim = proj.proj_in.in_features if plus else proj.image_embeds.in_features
        if image is not None:
            embeds, default_negative = self.encode_image(image)
        else:
            embeds = np.asarray(embeds, np.float32)
            default_negative = np.zeros_like(embeds) if not plus else None
        want = "[images, tokens, features]" if plus else "[images, features]"
        for name, x in (("ip_adapter_image_embeds", embeds), ("negative_ip_adapter_image_embeds", negative)):
            if x is not None and (np.ndim(x) != (3 if plus else 2) or np.shape(x)[-1] != dim):
                raise InputError(f"{name}: expected {want} with {dim} features for this "
                                 f"{'IP-Adapter Plus' if plus else 'IP-Adapter'}, got shape {np.shape(x)}")
        if negative is None:
            negative = default_negative
        if negative is None and guided:
            raise InputError("IP-Adapter Plus with ip_adapter_image_embeds and guidance: also pass "
                             "negative_ip_adapter_image_embeds (the encoder's penultimate states of a zero image)")
        negative = None if negative is None else np.asarray(negative, np.float32)
        if negative is not None and negative.shape != embeds.shape:
            raise InputError(f"negative_ip_adapter_image_embeds: shape {negative.shape} differs from "
                             f"ip_adapter_image_embeds {embeds.shape}")
        rows = np.repeat(embeds[None], batch, axis=0)
        if guided:
            rows = np.concatenate([np.repeat(negative[None], batch, axis=0), rows])
        return rows

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=jnp.float32,
                        mesh: jax.sharding.Mesh | None = None) -> Pipeline:
        """Load a diffusers-format folder (``model_index.json``), one converted to our format, or a training run
        folder (its latest checkpoint, :func:`canvas_jax.runs.run_components`); models in ``dtype``, weights in
        ``param_dtype``."""
        if detect_format(path) == "run":
            return cls(run_components(path, dtype=dtype, param_dtype=param_dtype), mesh=mesh)
        return cls(load_components(path, dtype=dtype, param_dtype=param_dtype), mesh=mesh)

    # ---- sizes -------------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return self.vae.downsample_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor times the UNet's total downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config["block_out_channels"]) - 1)

    @property
    def default_size(self) -> int:
        size = self.unet.config.get("sample_size") or 64
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.vae_scale_factor

    def check_size(self, height: int, width: int) -> None:
        k = self.size_multiple
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, (int, np.integer)) or v <= 0 or v % k:
                raise InputError(f"{name}={v!r} is not supported: image sides must be positive multiples of {k} "
                                 f"(VAE factor {self.vae_scale_factor} x UNet downsampling "
                                 f"{k // self.vae_scale_factor})")

    # ---- public API --------------------------------------------------------------------------------------
    def __call__(self, prompt, negative_prompt=None, height: int | None = None, width: int | None = None,
                 num_steps: int = 25, guidance_scale: float = 7.5, guidance_rescale: float = 0.0,
                 sampler: str = "dpmpp_2m", seed: int = 0, latents=None, output_type: str = "pil",
                 eta: float = 0.0, use_karras_sigmas: bool | None = None,
                 num_images_per_prompt: int = 1, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 negative_ip_adapter_image_embeds=None, return_log_probs: bool = False) -> PipelineOutput:
        """Text to image. ``latents``: NCHW starting noise (unit variance, like diffusers' ``latents``).
        ``return_log_probs`` (a stochastic ``sampler``: ddpm, ddim with ``eta`` > 0, euler_a, dpmpp_*_sde) also
        returns the per-step log-probabilities and the sampler trajectory (:class:`PipelineOutput`).

        With an IP-Adapter loaded (:meth:`load_ip_adapter`), ``ip_adapter_image`` is the image prompt: a PIL image,
        an HWC / NHWC uint8 array, or a list (several images of one adapter: their tokens are concatenated), used
        for every prompt. Or pass ``ip_adapter_image_embeds`` ([images, D] image_embeds, or [images, T, D]
        penultimate encoder states for Plus); the unconditional branch gets zeros (plain) or the zero image's
        states (Plus), or ``negative_ip_adapter_image_embeds``. The same arguments work in every mode."""
        return self._run("txt2img", prompt, negative_prompt, height, width, num_steps, guidance_scale,
                         guidance_rescale, sampler, seed, latents, output_type, eta, use_karras_sigmas,
                         num_images_per_prompt, ip=(ip_adapter_image, ip_adapter_image_embeds,
                                                    negative_ip_adapter_image_embeds),
                         return_log_probs=return_log_probs)

    def img2img(self, image, prompt, strength: float = 0.6, negative_prompt=None, *, height: int | None = None,
                width: int | None = None, num_steps: int = 25, guidance_scale: float = 7.5,
                guidance_rescale: float = 0.0, sampler: str = "dpmpp_2m", seed: int = 0, latents=None,
                output_type: str = "pil", eta: float = 0.0, use_karras_sigmas: bool | None = None,
                num_images_per_prompt: int = 1, ip_adapter_image=None, ip_adapter_image_embeds=None,
                negative_ip_adapter_image_embeds=None) -> PipelineOutput:
        """Re-draw ``image`` (PIL / numpy, one or one per prompt) from noise level ``strength`` in (0, 1]
        (IP-Adapter arguments as in :meth:`__call__`)."""
        return self._run("img2img", prompt, negative_prompt, height, width, num_steps, guidance_scale,
                         guidance_rescale, sampler, seed, latents, output_type, eta, use_karras_sigmas,
                         num_images_per_prompt, image=image, strength=strength,
                         ip=(ip_adapter_image, ip_adapter_image_embeds, negative_ip_adapter_image_embeds))

    def inpaint(self, image, mask, prompt, negative_prompt=None, *, strength: float = 1.0,
                height: int | None = None, width: int | None = None, num_steps: int = 25,
                guidance_scale: float = 7.5, guidance_rescale: float = 0.0, sampler: str = "dpmpp_2m",
                seed: int = 0, latents=None, output_type: str = "pil", eta: float = 0.0,
                use_karras_sigmas: bool | None = None, num_images_per_prompt: int = 1,
                keep_unmasked: bool = True, ip_adapter_image=None, ip_adapter_image_embeds=None,
                negative_ip_adapter_image_embeds=None) -> PipelineOutput:
        """Repaint where ``mask`` is white (>= 0.5). A 9-channel inpainting UNet is conditioned on the mask and
        the masked image's latents; any other UNet keeps the unmasked latents by blending after every step.
        ``keep_unmasked`` pastes the original pixels back outside the mask. IP-Adapter arguments as in
        :meth:`__call__`."""
        return self._run("inpaint", prompt, negative_prompt, height, width, num_steps, guidance_scale,
                         guidance_rescale, sampler, seed, latents, output_type, eta, use_karras_sigmas,
                         num_images_per_prompt, image=image, mask=mask, strength=strength,
                         keep_unmasked=keep_unmasked,
                         ip=(ip_adapter_image, ip_adapter_image_embeds, negative_ip_adapter_image_embeds))

    def outpaint(self, image, prompt, left: int = 0, top: int = 0, right: int = 64, bottom: int = 0, *,
                 fill: str = "edge", **kwargs) -> PipelineOutput:
        """Extend the canvas by the given margins (pixels), fill the new border (``"edge"``: replicate the edge
        pixels, ``"noise"``: uniform noise), then inpaint the border; other arguments as :meth:`inpaint`."""
        margins = {"left": left, "top": top, "right": right, "bottom": bottom}
        bad = {k: v for k, v in margins.items() if not isinstance(v, (int, np.integer)) or v < 0}
        if bad:
            raise InputError(f"outpaint margins must be non-negative ints, got {bad}")
        if not any(margins.values()):
            raise InputError("outpaint: all margins are 0; give left/top/right/bottom > 0 pixels to extend")
        if fill not in FILLS:
            raise InputError(f"outpaint fill={fill!r}: expected one of {list(FILLS)}")
        x = imgs.to_array(image)
        n, h, w, _ = x.shape
        self.check_size(h + top + bottom, w + left + right)
        pad = ((0, 0), (top, bottom), (left, right), (0, 0))
        canvas = np.pad(x, pad, mode="edge")
        mask = np.pad(np.zeros((n, h, w, 1), np.float32), pad, constant_values=1.0)
        if fill == "noise":
            rand = np.random.default_rng(kwargs.get("seed", 0)).uniform(0, 1, canvas.shape).astype(np.float32)
            canvas = np.where(mask > 0.5, rand, canvas)
        for key in ("height", "width"):
            if kwargs.get(key) is not None:
                raise InputError(f"outpaint: {key} is set by the image size and the margins; do not pass it")
        return self.inpaint(canvas, mask, prompt, **kwargs)

    # ---- internals ---------------------------------------------------------------------------------------
    def _tokenize(self, tokenizer, texts: list[str]) -> np.ndarray:
        return tokenizer(texts)["input_ids"].astype(np.int32)

    def _run(self, task, prompt, negative_prompt, height, width, num_steps, guidance_scale, guidance_rescale,
             sampler, seed, latents, output_type, eta, use_karras_sigmas, num_images_per_prompt, *,
             image=None, mask=None, strength=1.0, keep_unmasked=True, ip=(None, None, None),
             return_log_probs=False) -> PipelineOutput:
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type={output_type!r}: expected one of {list(OUTPUT_TYPES)}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise InputError(f"num_images_per_prompt must be an int >= 1, got {num_images_per_prompt!r}")
        prompts = [p for p in _as_list(prompt, "prompt") for _ in range(num_images_per_prompt)]
        batch = len(prompts)
        negatives = None
        if negative_prompt is not None:
            negatives = _as_list(negative_prompt, "negative_prompt")
            if len(negatives) == 1:
                negatives = negatives * (batch // num_images_per_prompt)
            if len(negatives) * num_images_per_prompt != batch:
                raise InputError(f"negative_prompt: got {len(negatives)} for {batch // num_images_per_prompt} "
                                 "prompts; expected one, or one per prompt")
            negatives = [p for p in negatives for _ in range(num_images_per_prompt)]

        inputs: dict[str, Any] = {}
        if self.inpainting_unet and task != "inpaint":  # condition on "repaint everything"
            if task == "txt2img":
                height = self.default_size if height is None else height
                width = self.default_size if width is None else width
                image = np.full((1, height, width, 3), 0.5, np.float32)
            else:
                strength = float(strength)
            mask = np.ones((1, 1, 1, 1), np.float32)
            task = "inpaint"
        if task != "txt2img":
            pixels = imgs.to_array(image, "image")
            height = pixels.shape[1] if height is None else height
            width = pixels.shape[2] if width is None else width
            self.check_size(height, width)
            pixels = self._per_row(imgs.resize(pixels, height, width), batch, "image")
            inputs["image"] = pixels
            if task == "inpaint":
                m = imgs.mask_to_array(mask, "mask")
                if m.shape[1:3] == (1, 1):
                    m = np.broadcast_to(m, (m.shape[0], height, width, 1))
                m = self._per_row(imgs.resize(m, height, width, imgs.Image.NEAREST), batch, "mask")
                inputs["mask"] = m
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        self.check_size(height, width)

        guided = bool(guidance_scale > 1.0)
        zero_negative = guided and negative_prompt is None and self.sdxl and self.force_zeros_for_empty_prompt
        texts = prompts if (not guided or zero_negative) else (negatives or [""] * batch) + prompts
        tokens = self.tokenizer(texts)
        inputs["ids"] = tokens["input_ids"].astype(np.int32)
        if isinstance(self.components.text_encoder, BertModel):
            inputs["attn"] = tokens["attention_mask"].astype(np.int32)
        if self.sdxl:
            inputs["ids2"] = self._tokenize(self.tokenizer_2, texts)
            inputs["time_ids"] = np.tile(np.array([height, width, 0, 0, height, width], np.float32), (batch, 1))
        inputs["noise"] = self._noise(latents, batch, height, width, seed)
        inputs["rng"] = jax.random.fold_in(jax.random.key(seed), 1)
        inputs["guidance_scale"] = np.float32(guidance_scale)
        ip_embeds = self._ip_embeds(*ip, batch, guided)
        if ip_embeds is not None:
            inputs["ip_embeds"] = ip_embeds

        start_step = 0
        if task == "img2img" or (task == "inpaint" and strength < 1.0):
            start_step = strength_to_start_step(num_steps, strength)
        elif task == "inpaint" and strength != 1.0:
            raise InputError(f"strength must be in (0, 1], got {strength}")
        st = _Static(self._graphs, self.schedule, sampler, num_steps, start_step, float(eta), use_karras_sigmas,
                     guided, float(guidance_rescale), task, task == "img2img" or strength < 1.0, bool(keep_unmasked),
                     zero_negative, self.sdxl, output_type != "latent", bool(return_log_probs))
        out, extra = self._call(st, inputs, batch), {}
        if return_log_probs:
            out, extra = out["images"], {k: np.asarray(out[k]) for k in ("log_probs", "trajectory")}
        out = np.asarray(out)
        return PipelineOutput(images=imgs.to_pil(out) if output_type == "pil" else out, **extra)

    def _per_row(self, x: np.ndarray, batch: int, what: str) -> np.ndarray:
        if x.shape[0] == batch:
            return x
        if x.shape[0] == 1:
            return np.repeat(x, batch, axis=0)
        raise InputError(f"{what}: got {x.shape[0]} images for a batch of {batch}; expected 1 or {batch}")

    def _noise(self, latents, batch: int, height: int, width: int, seed: int) -> np.ndarray:
        channels = self.unet.config["out_channels"]
        shape = (batch, height // self.vae_scale_factor, width // self.vae_scale_factor, channels)
        if latents is None:
            return np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0), shape, jnp.float32))
        latents = np.asarray(latents, np.float32)
        want = (batch, channels, shape[1], shape[2])
        if latents.shape != want:
            raise InputError(f"latents: expected NCHW shape {want} for {batch} images of {height}x{width}, "
                             f"got {latents.shape}")
        return latents.transpose(0, 2, 3, 1)

    def _call(self, st: _Static, inputs: dict, batch: int) -> jax.Array:
        """Run the compiled program; with a mesh the batch rows are padded to a multiple of its size and
        sharded (``ids`` of a guided batch are [uncond; cond], so each half is padded on its own)."""
        if self.mesh is None:
            return _generate(st, self._states, inputs)
        n = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        pad = (-batch) % n

        def pad_rows(x, halves=1):
            parts = np.split(np.asarray(x), halves)
            parts = [np.concatenate([p, np.repeat(p[-1:], pad, axis=0)]) for p in parts]
            return np.concatenate(parts)

        sharded = {}
        for key, value in inputs.items():
            if key == "rng" or key == "guidance_scale":
                sharded[key] = _to_mesh(value, NamedSharding(self.mesh, P()))
                continue
            halves = 2 if key in ("ids", "ids2", "attn", "ip_embeds") and value.shape[0] == 2 * batch else 1
            value = pad_rows(value, halves) if pad else np.asarray(value)
            spec = batch_spec(value.ndim) if halves == 1 else P()
            sharded[key] = _to_mesh(value, NamedSharding(self.mesh, spec))
        def rows(out):
            if not out.is_fully_addressable:  # rows on other processes' devices: every process gets all of them
                out = multihost_utils.process_allgather(out, tiled=True)
            return out[:batch]

        return jax.tree.map(rows, _generate(st, self._states, sharded))


def _to_mesh(value, sharding: NamedSharding) -> jax.Array:
    """``value`` (the same on every process) as an array with ``sharding``, which may span processes: each
    process fills the shards on its own devices from its own copy."""
    if jax.process_count() == 1:
        return jax.device_put(value, sharding)
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        data = _to_mesh(np.asarray(jax.random.key_data(value)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
