"""KRAdapter around nn.Conv1d and nn.Conv3d: the update acts on the kernel flattened to out x (in/groups * prod(k)).

Everything is Conv2d's (layer.py): the plain path convolves the input with alpha * Delta W reshaped to the kernel
(through the base layer's own _conv_forward, so stride, padding, dilation and groups follow it), the summed-kernel
path (fused.merged_kernel_conv2d) runs one convolution with W0 + alpha * Delta W, and merge / unmerge reshape
through _geometry.to_weight_layout. Only the base type differs.
"""

from __future__ import annotations

from .layer import Conv2d


class Conv1d(Conv2d):
    """KRAdapter around nn.Conv1d (kernel (out, in/groups, k) -> out x (in/groups * k))."""


class Conv3d(Conv2d):
    """KRAdapter around nn.Conv3d (kernel (out, in/groups, kd, kh, kw) -> out x (in/groups * kd * kh * kw))."""
