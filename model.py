"""
From pixels to boxes: YOLOv5 (v6+ architecture) as plain PyTorch modules, box decoding, loading checkpoints (official
and ours), non-maximum suppression and mapping boxes back to the image.

The layers are numbered exactly as in the original yolov5s.yaml (model.0 ... model.24) and yolov5s6.yaml (model.0 ...
model.33: the P6 models, a fourth output level at stride 64), so the official checkpoints load by name with no key
mapping. Concat and Upsample have no weights: their places hold an unused nn.Identity.
"""
import functools
import math
import sys
import time

import torch
import torch.nn as nn

from plumbing import COCO_NAMES, clock, read_checkpoint, torchvision_nms, xywh2xyxy

# (depth multiple, width multiple) of each official scale
SCALES = {'n': (0.33, 0.25), 's': (0.33, 0.50), 'm': (0.67, 0.75), 'l': (1.0, 1.0), 'x': (1.33, 1.25)}
# COCO anchors in pixels (w, h), three per output level P3/8, P4/16, P5/32 (and P6/64 for the P6 models)
ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
ANCHORS_P6 = [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137], [140, 301, 303, 264, 238, 542],
              [436, 615, 739, 380, 925, 792]]


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> SiLU. After fuse() the BatchNorm is folded into the conv."""
    def __init__(self, c_in, c_out, k=1, s=1, p=None):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)  # YOLOv5's BN settings
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) if hasattr(self, 'bn') else self.conv(x))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):  # C3's bottlenecks keep c channels throughout
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 1), Conv(c, c, 3), shortcut

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    """CSP block: one branch goes through n bottlenecks, the other is a 1x1 shortcut; both concatenated."""
    def __init__(self, c_in, c_out, n=1, shortcut=True):
        super().__init__()
        c_mid = c_out // 2
        self.cv1, self.cv2, self.cv3 = Conv(c_in, c_mid, 1), Conv(c_in, c_mid, 1), Conv(2 * c_mid, c_out, 1)
        self.m = nn.Sequential(*(Bottleneck(c_mid, shortcut) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools equal pools of 5, 9 and 13."""
    def __init__(self, c_in, c_out, k=5):
        super().__init__()
        self.cv1, self.cv2 = Conv(c_in, c_in // 2, 1), Conv(c_in // 2 * 4, c_out, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


def decode_boxes(t, offsets, anchors, stride=1):
    """Raw box outputs t (..., 4) -> boxes (x, y, w, h). The centre is its cell's corner (in offsets, less 0.5) plus
    2 * sigmoid, so it may move half a cell beyond its cell; the size is the anchor's times (2 * sigmoid) ** 2, at most
    4x. Both stay bounded, unlike exp(), which keeps early training stable. One decode for Detect and the loss."""
    xy, wh = t.sigmoid().split(2, -1)
    return torch.cat(((xy * 2 + offsets) * stride, (wh * 2) ** 2 * anchors), -1)


class Detect(nn.Module):
    """1x1 conv per level to na*(5+nc) outputs; in eval mode also decodes them to boxes in pixels."""
    def __init__(self, nc, anchors, channels):
        super().__init__()
        self.nc = nc
        self.no = nc + 5  # outputs per anchor: box (4), objectness, class scores
        self.nl = len(anchors)  # output levels
        self.na = len(anchors[0]) // 2  # anchors per level
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in channels)
        strides = [8 * 2 ** i for i in range(self.nl)]  # P3/8, P4/16, ...
        self.register_buffer('stride', torch.tensor(strides, dtype=torch.float32), persistent=False)
        self.register_buffer('anchors', torch.zeros(self.nl, self.na, 2))  # in grid units, as the original's
        self.set_anchors(torch.tensor(anchors, dtype=torch.float32))
        # YOLOv5's prior: about 8 objects per 640 image at each level, class probability 0.6/nc
        for conv, s in zip(self.m, strides):
            b = conv.bias.detach().view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5:] += math.log(0.6 / (self.nc - 0.99999))

    def set_anchors(self, pixels):
        """New anchors (w, h) in pixels, (levels, anchors, 2) or flat; kept in grid units (pixels / stride)."""
        self.anchors[:] = pixels.to(self.anchors.device).view_as(self.anchors) / self.stride.view(-1, 1, 1)

    def pixel_anchors(self):
        """The anchors in pixels, (levels, anchors, 2)."""
        return self.anchors * self.stride.view(-1, 1, 1)

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def cell_offsets(ny, nx, device):  # each cell's (x, y) corner, less the 0.5 of decode_boxes; once per shape
        y, x = torch.meshgrid(torch.arange(ny, device=device), torch.arange(nx, device=device), indexing='ij')
        return torch.stack((x, y), 2).view(1, 1, ny, nx, 2).float() - 0.5

    def forward(self, features):
        raw, decoded = [], []
        for i, (conv, f) in enumerate(zip(self.m, features)):
            b, _, ny, nx = f.shape
            # fp32 from here, under autocast too: the boxes in pixels and the loss need its precision
            p = conv(f).float().view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(p)
            if not self.training:
                anchors = self.pixel_anchors()[i].view(1, self.na, 1, 1, 2)  # autoanchor may change them: not cached
                box = decode_boxes(p[..., :4], self.cell_offsets(ny, nx, p.device), anchors, self.stride[i])
                decoded.append(torch.cat((box, p[..., 4:].sigmoid()), 4).view(b, -1, self.no))
        return raw if self.training else (torch.cat(decoded, 1), raw)


class YOLOv5(nn.Module):
    def __init__(self, scale='n', nc=80, anchors=None, names=None, p6=False):
        super().__init__()
        if isinstance(scale, str):  # 'n' ... 'x', or 'n6' ... 'x6' for the P6 models
            scale, p6 = SCALES[scale[0]], p6 or scale.endswith('6')
        depth, width = scale
        self.scale = (depth, width)
        self.p6 = p6
        self.nc = nc
        self.names = list(names or (COCO_NAMES if nc == 80 else [f'class{i}' for i in range(nc)]))
        ch = lambda c: math.ceil(c * width / 8) * 8  # channels, rounded up to a multiple of 8
        n = lambda k: max(round(k * depth), 1)       # repeats of a C3 block
        c = [ch(k) for k in (64, 128, 256, 512, 768, 1024) if p6 or k != 768]  # P1/2, P2/4, ... the top level
        layers = [Conv(3, c[0], 6, 2, 2)]
        for i, repeats in enumerate((3, 6, 9, 3, 3)[:len(c) - 1]):  # backbone: down to P2/4 ... the top, each a C3
            layers += [Conv(c[i], c[i + 1], 3, 2), C3(c[i + 1], c[i + 1], n(repeats))]
        layers.append(SPPF(c[-1], c[-1]))
        for i in range(len(c) - 2, 1, -1):  # top-down: 1x1 conv, upsample, concat with the backbone's level, C3
            layers += [Conv(c[i + 1], c[i], 1), None, None, C3(2 * c[i], c[i], n(3), False)]
        for i in range(2, len(c) - 1):  # bottom-up: stride 2 conv, concat with the top-down conv's output, C3
            layers += [Conv(c[i], c[i], 3, 2), None, C3(2 * c[i], c[i + 1], n(3), False)]
        layers.append(Detect(nc, anchors or (ANCHORS_P6 if p6 else ANCHORS), c[2:]))  # P3 ... top
        self.model = nn.ModuleList(nn.Identity() if m is None else m for m in layers)

    @property
    def detect(self):
        return self.model[-1]

    @property
    def max_stride(self):  # image sizes are multiples of it: 32, or 64 for the P6 models
        return int(self.detect.stride.max())

    def meta(self):
        """What YOLOv5(**meta) needs to rebuild this model: saved in every checkpoint beside the weights."""
        anchors = self.detect.pixel_anchors().view(self.detect.nl, -1).tolist()  # also in the weights: for readers
        return dict(scale=list(self.scale), nc=self.nc, names=list(self.names), p6=self.p6, anchors=anchors)

    def forward(self, x):
        up = lambda t: nn.functional.interpolate(t, scale_factor=2.0, mode='nearest')
        layers = iter([m for m in self.model[:-1] if not isinstance(m, nn.Identity)])  # in their order
        step = lambda t: next(layers)(t)
        levels = [step(x)]  # P1/2, then the backbone's P2/4 ... the top level
        while len(levels) < self.detect.nl + 2:
            levels.append(step(step(levels[-1])))
        x = step(levels.pop())  # SPPF
        lateral = []
        for f in reversed(levels[2:]):  # top-down, concatenated with the backbone's P4 (P5) ... P3
            lateral.append(step(x))
            x = step(torch.cat((up(lateral[-1]), f), 1))
        outputs = [x]
        for h in reversed(lateral):  # bottom-up, concatenated with the top-down's 1x1 convs
            outputs.append(step(torch.cat((step(outputs[-1]), h), 1)))
        return self.detect(outputs)

    def forward_augment(self, x):
        """Test-time augmentation: the images at scales 1, 0.83 (flipped left-right) and 0.67, their boxes mapped back
        to x and pooled for NMS. The full size pass leaves out its coarsest level and the smallest pass its finest:
        the largest and the smallest objects there, which the other scales see at a better size."""
        out = []
        for s, flip in ((1, False), (0.83, True), (0.67, False)):
            y, raw = self(rescale(x.flip(3) if flip else x, s, self.max_stride))
            y[..., :4] /= s
            if flip:
                y[..., 0] = x.shape[3] - y[..., 0]
            first, last = (r[0, ..., 0].numel() for r in (raw[0], raw[-1]))  # predictions of the level
            out.append(y[:, :-last] if s == 1 else y[:, first:] if s == 0.67 else y)
        return torch.cat(out, 1), None

    @torch.no_grad()
    def fuse(self):
        """Fold each BatchNorm into the conv before it: same outputs, fewer ops at inference."""
        for m in [m for m in self.modules() if isinstance(m, Conv) and hasattr(m, 'bn')]:
            scale = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)
            m.conv.weight.mul_(scale.view(-1, 1, 1, 1))
            m.conv.bias = nn.Parameter(m.bn.bias - m.bn.running_mean * scale)
            del m.bn
        return self


# ----------------------------------------------------------------------------------------------
def load_model(path, device='cpu', fuse=False):
    """The model a checkpoint describes with its weights, in eval mode: an official yolov5*.pt (downloaded if missing;
    read without the original's code, and without running anything in its pickle) or one of ours (a plain dict).
    Raises ValueError or FileNotFoundError."""
    meta, sd = read_checkpoint(path)
    model = YOLOv5(**meta).to(device).eval()
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ValueError(f'{path}: weights do not fit the model they describe: {str(e)[:300]}') from None
    return model.fuse() if fuse else model


# ----------------------------------------------------------------------------------------------
# From the model's output to boxes on the image.
def non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False,
                        multi_label=False, max_det=300, max_nms=30000, max_wh=7680):
    """pred (b, N, 5+nc) decoded model output -> list of (n, 6) tensors [x1, y1, x2, y2, conf, cls] per image.
    conf = objectness * class score; multi_label keeps every class above conf_thres per box (val does)."""
    time_limit = 0.5 + 0.05 * pred.shape[0]
    t0 = clock(pred.device)  # from the end of the forward: on a GPU it may still run, and would eat the time limit
    out = [torch.zeros((0, 6), device=pred.device)] * pred.shape[0]
    for i, x in enumerate(pred):
        x = x[x[:, 4] > conf_thres]
        scores, box = x[:, 5:] * x[:, 4:5], xywh2xyxy(x[:, :4])
        if multi_label and scores.shape[1] > 1:
            j, k = (scores > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[j], scores[j, k, None], k[:, None].float()), 1)
        else:
            conf, k = scores.max(1, keepdim=True)
            x = torch.cat((box, conf, k.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if not len(x):
            continue
        x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        offsets = x[:, 5:6] * (0 if agnostic else max_wh)  # shift each class apart: boxes of two classes never overlap
        keep = torchvision_nms()(x[:, :4] + offsets, x[:, 4], iou_thres)[:max_det]
        out[i] = x[keep]
        if time.perf_counter() - t0 > time_limit:
            print(f'WARNING: NMS time limit {time_limit:.3f}s exceeded', file=sys.stderr)
            break
    return out


def rescale(x, ratio, stride):
    """Images x resized by ratio, padded right and bottom to a multiple of stride with the letterbox's grey."""
    if ratio == 1:
        return x
    h, w = (int(v * ratio) for v in x.shape[2:])
    pad_h, pad_w = (math.ceil(v * ratio / stride) * stride - new for v, new in zip(x.shape[2:], (h, w)))
    x = nn.functional.interpolate(x, size=(h, w), mode='bilinear', align_corners=False)
    return nn.functional.pad(x, [0, pad_w, 0, pad_h], value=0.447)  # 114 / 255


@torch.inference_mode()
def predict(model, imgs, dtype=None, augment=False):
    """Yields (decoded predictions, raw maps) of a batch chunk by chunk, in mixed precision with a 16-bit dtype. On
    CPU chunks of 4 run ~1.8x faster than a batch of 32 (memory traffic), with the same outputs in eval mode.
    augment: test-time augmentation (no raw maps)."""
    for chunk in imgs.split(4 if imgs.device.type == 'cpu' else len(imgs)):
        with torch.autocast(imgs.device.type, dtype=dtype, enabled=dtype is not None):
            yield model.forward_augment(chunk) if augment else model(chunk)


def scale_boxes(boxes, from_shape, to_shape, ratio_pad=None):
    """Map xyxy boxes from the letterboxed image (h, w) back to the original image (h, w), clipped."""
    if ratio_pad is None:
        gain = min(from_shape[0] / to_shape[0], from_shape[1] / to_shape[1])
        pad = (from_shape[1] - to_shape[1] * gain) / 2, (from_shape[0] - to_shape[0] * gain) / 2
    else:
        gain, pad = ratio_pad
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - pad[0]) / gain).clamp(0, to_shape[1])
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - pad[1]) / gain).clamp(0, to_shape[0])
    return boxes


