"""
From pixels to boxes: YOLOv5 (v6+) as PyTorch modules, box decoding, models from checkpoints,
non-maximum suppression. The network is a table of numbered layers, the original's yolov5s.yaml (P5,
0-24) and yolov5s6.yaml (P6, 0-33): model.model[i] is layer i; official checkpoints load by name.
"""
import functools
import math
import sys
import time

import torch
import torch.nn as nn

from support.checkpoints import first_difference, read_checkpoint
from support.cli import clock, parse_cfg, torchvision_nms
from support.datasets import COCO_NAMES, xywh2xyxy

SCALES = {'n': (0.33, 0.25), 's': (0.33, 0.50), 'm': (0.67, 0.75), 'l': (1.0, 1.0),
          'x': (1.33, 1.25)}  # (depth multiple, width multiple)


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> SiLU. fuse() folds the BatchNorm into the conv."""
    def __init__(self, c_in, c_out, kernel=1, stride=1, padding=None):
        super().__init__()
        padding = kernel // 2 if padding is None else padding
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)  # YOLOv5's settings
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, 'bn'):
            x = self.bn(x)
        return self.act(x)


class Bottleneck(nn.Module):
    """A 1x1 then a 3x3 conv, plus the input (the shortcut)."""
    def __init__(self, channels, shortcut=True):
        super().__init__()
        self.cv1 = Conv(channels, channels, 1)
        self.cv2 = Conv(channels, channels, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block: bottlenecks on one branch, a 1x1 conv on the other, concatenated. (Attribute
    names, cv1 ... m, are the original's: its checkpoints' keys.)"""
    def __init__(self, c_in, c_out, bottlenecks=1, shortcut=True):
        super().__init__()
        hidden = c_out // 2
        self.cv1 = Conv(c_in, hidden, 1)
        self.cv2 = Conv(c_in, hidden, 1)
        self.cv3 = Conv(2 * hidden, c_out, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(bottlenecks)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools equal pools of 5, 9 and 13."""
    def __init__(self, c_in, c_out, kernel=5):
        super().__init__()
        self.cv1 = Conv(c_in, c_in // 2, 1)
        self.cv2 = Conv(c_in // 2 * 4, c_out, 1)
        self.m = nn.MaxPool2d(kernel, 1, kernel // 2)

    def forward(self, x):
        pooled = [self.cv1(x)]
        for _ in range(3):
            pooled.append(self.m(pooled[-1]))
        return self.cv2(torch.cat(pooled, 1))


class Concat(nn.Module):
    """Feature maps of one size, joined along the channels."""
    def forward(self, maps):
        return torch.cat(maps, 1)


def decode_boxes(raw, offsets, anchors, stride=1):
    """Raw outputs t (..., 4) -> (x, y, w, h): xy = (2 sigmoid(t) + offsets) * stride, offsets the
    cell's corner less 0.5 (so -0.5 to 1.5 cells on); wh = anchor * (2 sigmoid(t)) ** 2 (0 to 4)."""
    xy, wh = raw.sigmoid().split(2, -1)
    return torch.cat(((xy * 2 + offsets) * stride, (wh * 2) ** 2 * anchors), -1)


class Detect(nn.Module):
    """A 1x1 conv per level to na * (5 + nc) numbers a cell: per anchor a box, objectness and class
    scores. Returns each level's raw maps (b, na, ny, nx, 5 + nc); in eval mode (boxes decoded in
    pixels, (b, na * cells, 5 + nc), raw)."""
    def __init__(self, nc, anchors, channels, strides):
        super().__init__()
        if not len(anchors) == len(channels) == len(strides):
            raise ValueError(f'Detect: {len(anchors)} levels of anchors for {len(channels)} inputs')
        self.nc = nc
        self.no = nc + 5  # numbers per anchor: box, objectness, classes
        self.nl = len(anchors)  # levels
        self.na = len(anchors[0]) // 2  # anchors per level
        self.m = nn.ModuleList(nn.Conv2d(c_in, self.na * self.no, 1) for c_in in channels)
        stride = torch.tensor(strides, dtype=torch.float32)
        self.register_buffer('stride', stride, persistent=False)
        self.register_buffer('anchors', torch.zeros(self.nl, self.na, 2))  # in grid units
        self.set_anchors(torch.tensor(anchors, dtype=torch.float32))
        # YOLOv5's prior: about 8 objects per 640 image at each level, class probability ~0.6 / nc
        for conv, level_stride in zip(self.m, strides):
            bias = conv.bias.detach().view(self.na, -1)
            bias[:, 4] += math.log(8 / (640 / level_stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (self.nc - 0.99999))

    def set_anchors(self, pixels):
        """New anchors (w, h) in pixels, (levels, anchors, 2) or flat."""
        pixels = pixels.to(self.anchors.device).view_as(self.anchors)
        self.anchors[:] = pixels / self.stride.view(-1, 1, 1)

    def pixel_anchors(self):
        return self.anchors * self.stride.view(-1, 1, 1)

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def cell_offsets(ny, nx, device):
        """decode_boxes' offsets: each cell's (x, y) corner less 0.5; once per grid size."""
        rows = torch.arange(ny, device=device)
        columns = torch.arange(nx, device=device)
        grid_y, grid_x = torch.meshgrid(rows, columns, indexing='ij')
        return torch.stack((grid_x, grid_y), 2).view(1, 1, ny, nx, 2).float() - 0.5

    def forward(self, features):
        raw = []
        decoded = []
        for i, (conv, feature) in enumerate(zip(self.m, features)):
            batch, _, ny, nx = feature.shape
            # fp32 from here, under autocast too: boxes in pixels and the loss need it
            out = conv(feature).float().view(batch, self.na, self.no, ny, nx)
            out = out.permute(0, 1, 3, 4, 2).contiguous()
            raw.append(out)
            if not self.training:
                anchors = self.pixel_anchors()[i].view(1, self.na, 1, 1, 2)  # autoanchor moves them
                offsets = self.cell_offsets(ny, nx, out.device)
                box = decode_boxes(out[..., :4], offsets, anchors, self.stride[i])
                scores = out[..., 4:].sigmoid()
                decoded.append(torch.cat((box, scores), 4).view(batch, -1, self.no))
        return raw if self.training else (torch.cat(decoded, 1), raw)


# ---------------------------------------- the layers
# An architecture is a function giving the rows (from, layer) of its table at a scale: width(64)
# is 64 channels at that scale, depth(3) 3 bottlenecks. "from" is a layer's number (-1: the one
# before) or a list of them. Edit a row for your own block; a new level is a table of its own.
def first_layers(width, depth):
    """Layers 0-6 of both tables: down to P4/16."""
    return [
        (-1, Conv(3, width(64), 6, 2, 2)),                       # 0: P1/2
        (-1, Conv(width(64), width(128), 3, 2)),                 # 1: P2/4
        (-1, C3(width(128), width(128), depth(3))),              # 2
        (-1, Conv(width(128), width(256), 3, 2)),                # 3: P3/8
        (-1, C3(width(256), width(256), depth(6))),              # 4
        (-1, Conv(width(256), width(512), 3, 2)),                # 5: P4/16
        (-1, C3(width(512), width(512), depth(9))),              # 6
    ]


def p5_layers(width, depth, nc, anchors):
    """yolov5s.yaml: the backbone (0-9), the top-down path (10-17), the bottom-up path (18-23)."""
    return first_layers(width, depth) + [
        (-1, Conv(width(512), width(1024), 3, 2)),               # 7: P5/32
        (-1, C3(width(1024), width(1024), depth(3))),            # 8
        (-1, SPPF(width(1024), width(1024))),                    # 9
        (-1, Conv(width(1024), width(512), 1)),                  # 10
        (-1, nn.Upsample(None, 2, 'nearest')),                   # 11
        ([-1, 6], Concat()),                                     # 12: with the backbone's P4
        (-1, C3(2 * width(512), width(512), depth(3), False)),   # 13
        (-1, Conv(width(512), width(256), 1)),                   # 14
        (-1, nn.Upsample(None, 2, 'nearest')),                   # 15
        ([-1, 4], Concat()),                                     # 16: with the backbone's P3
        (-1, C3(2 * width(256), width(256), depth(3), False)),   # 17: P3 out
        (-1, Conv(width(256), width(256), 3, 2)),                # 18
        ([-1, 14], Concat()),                                    # 19
        (-1, C3(2 * width(256), width(512), depth(3), False)),   # 20: P4 out
        (-1, Conv(width(512), width(512), 3, 2)),                # 21
        ([-1, 10], Concat()),                                    # 22
        (-1, C3(2 * width(512), width(1024), depth(3), False)),  # 23: P5 out
        ([17, 20, 23], Detect(nc, anchors, [width(256), width(512), width(1024)],  # 24
                              strides=[8, 16, 32])),
    ]


def p6_layers(width, depth, nc, anchors):
    """yolov5s6.yaml: P5's, with P6/64 added to the backbone and both paths."""
    return first_layers(width, depth) + [
        (-1, Conv(width(512), width(768), 3, 2)),                # 7: P5/32
        (-1, C3(width(768), width(768), depth(3))),              # 8
        (-1, Conv(width(768), width(1024), 3, 2)),               # 9: P6/64
        (-1, C3(width(1024), width(1024), depth(3))),            # 10
        (-1, SPPF(width(1024), width(1024))),                    # 11
        (-1, Conv(width(1024), width(768), 1)),                  # 12
        (-1, nn.Upsample(None, 2, 'nearest')),                   # 13
        ([-1, 8], Concat()),                                     # 14: with the backbone's P5
        (-1, C3(2 * width(768), width(768), depth(3), False)),   # 15
        (-1, Conv(width(768), width(512), 1)),                   # 16
        (-1, nn.Upsample(None, 2, 'nearest')),                   # 17
        ([-1, 6], Concat()),                                     # 18: with the backbone's P4
        (-1, C3(2 * width(512), width(512), depth(3), False)),   # 19
        (-1, Conv(width(512), width(256), 1)),                   # 20
        (-1, nn.Upsample(None, 2, 'nearest')),                   # 21
        ([-1, 4], Concat()),                                     # 22: with the backbone's P3
        (-1, C3(2 * width(256), width(256), depth(3), False)),   # 23: P3 out
        (-1, Conv(width(256), width(256), 3, 2)),                # 24
        ([-1, 20], Concat()),                                    # 25
        (-1, C3(2 * width(256), width(512), depth(3), False)),   # 26: P4 out
        (-1, Conv(width(512), width(512), 3, 2)),                # 27
        ([-1, 16], Concat()),                                    # 28
        (-1, C3(2 * width(512), width(768), depth(3), False)),   # 29: P5 out
        (-1, Conv(width(768), width(768), 3, 2)),                # 30
        ([-1, 12], Concat()),                                    # 31
        (-1, C3(2 * width(768), width(1024), depth(3), False)),  # 32: P6 out
        ([23, 26, 29, 32], Detect(nc, anchors, [width(256), width(512), width(768),  # 33
                                                width(1024)], strides=[8, 16, 32, 64])),
    ]


ARCHITECTURES = {'p5': p5_layers, 'p6': p6_layers}  # --cfg yolov5s.yaml: p5; yolov5s6.yaml: p6
# COCO's anchors in pixels (w, h), three per output level, the finest level first
ANCHORS = {'p5': [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119],
                  [116, 90, 156, 198, 373, 326]],
           'p6': [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137],
                  [140, 301, 303, 264, 238, 542], [436, 615, 739, 380, 925, 792]]}


class YOLOv5(nn.Module):
    """One architecture (a table above) at one scale; checkpoints hold its config()."""

    def __init__(self, scale='n', nc=80, names=None, anchors=None, arch='p5'):
        super().__init__()
        if isinstance(scale, str):  # 'n' ... 'x', or 'n6' ... 'x6' for P6
            if len(scale) > 1:
                scale, arch = parse_cfg(scale, SCALES, ARCHITECTURES)
            scale = SCALES[scale]
        depth_multiple, width_multiple = scale

        def width(channels):  # a multiple of 8
            return math.ceil(channels * width_multiple / 8) * 8

        def depth(repeats):
            return max(round(repeats * depth_multiple), 1)
        rows = ARCHITECTURES[arch](width, depth, nc, anchors or ANCHORS[arch])
        self.sources = [source for source, _ in rows]  # the "from" column
        self.model = nn.ModuleList(layer for _, layer in rows)
        # forward keeps the outputs that later layers take
        listed = [[source] if type(source) is int else source for source in self.sources]
        self.taken = {i for source in listed for i in source}
        self.arch = arch
        self.scale = (depth_multiple, width_multiple)
        self.nc = nc
        self.names = list(names or (COCO_NAMES if nc == 80 else [f'class{i}' for i in range(nc)]))

    def config(self):
        """What YOLOv5(**config) needs to build this model again; an argument you add too."""
        anchors = self.detect.pixel_anchors().view(self.detect.nl, -1).tolist()  # autoanchor's
        return dict(arch=self.arch, scale=list(self.scale), nc=self.nc, names=list(self.names),
                    anchors=anchors)

    @property
    def detect(self):
        return self.model[-1]

    @property
    def max_stride(self):  # image sizes are multiples of it: 32, or 64 for P6
        return int(self.detect.stride.max())

    def forward(self, x):
        outputs = []  # by layer number (None where no later layer takes it)
        for i, (source, layer) in enumerate(zip(self.sources, self.model)):
            if type(source) is int:  # one layer's output: -1 the layer before
                x = layer(x if source == -1 else outputs[source])
            else:  # a list of them
                x = layer([outputs[number] if number != -1 else x for number in source])
            outputs.append(x if i in self.taken else None)
        return x

    def forward_augment(self, x):
        """Test-time augmentation: x at scales 1, 0.83 (flipped) and 0.67, boxes pooled for NMS,
        less the coarsest level at full size and the finest at the smallest."""
        out = []
        for ratio, flip in ((1, False), (0.83, True), (0.67, False)):
            y, raw = self(rescale(x.flip(3) if flip else x, ratio, self.max_stride))
            y[..., :4] /= ratio
            if flip:
                y[..., 0] = x.shape[3] - y[..., 0]
            coarsest = raw[-1].shape[1:4].numel()  # anchors x cells
            finest = raw[0].shape[1:4].numel()
            if ratio == 1:
                y = y[:, :-coarsest]
            elif ratio == 0.67:
                y = y[:, finest:]
            out.append(y)
        return torch.cat(out, 1), None

    @torch.no_grad()
    def fuse(self):
        """Folds each BatchNorm into its conv: same outputs, fewer operations."""
        for block in list(self.modules()):  # (a list: the loop removes modules)
            if not isinstance(block, Conv) or not hasattr(block, 'bn'):
                continue
            scale = block.bn.weight / torch.sqrt(block.bn.running_var + block.bn.eps)
            block.conv.weight.mul_(scale.view(-1, 1, 1, 1))
            block.conv.bias = nn.Parameter(block.bn.bias - block.bn.running_mean * scale)
            del block.bn
        return self


# ---------------------------------------- checkpoints
def from_config(config, weights, source):
    """YOLOv5(**config) with a state dict; a ValueError naming the layer that does not fit."""
    if config.get('arch', 'p5') not in ARCHITECTURES:
        raise ValueError(f'{source}: arch {config["arch"]!r} is not an architecture of model.py')
    try:
        model = YOLOv5(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f'{source}: model.py cannot build the model it describes ({e})') from None
    difference = first_difference(model, weights)  # 'layer 13 (C3) differs: ...'
    if difference:
        raise ValueError(f'{source}: weights do not fit the model they describe: {difference}')
    model.load_state_dict(weights)
    return model


def load_model(path, device='cpu', fuse=False):
    """A checkpoint's model (official, downloaded if missing, or ours), in eval mode."""
    config, weights = read_checkpoint(path)
    model = from_config(config, weights, path).to(device).eval()
    return model.fuse() if fuse else model


# ---------------------------------------- inference
@torch.inference_mode()
def predict(model, imgs, dtype=None, augment=False):
    """Yields (decoded predictions, raw maps) a chunk at a time, in dtype if given. On CPU chunks
    of 4 run ~1.8x faster than a batch of 32."""
    for chunk in imgs.split(4 if imgs.device.type == 'cpu' else len(imgs)):
        with torch.autocast(imgs.device.type, dtype=dtype, enabled=dtype is not None):
            yield model.forward_augment(chunk) if augment else model(chunk)


def rescale(x, ratio, stride):
    """Images x resized by ratio, padded right and bottom to a stride multiple with grey."""
    if ratio == 1:
        return x
    height, width = (int(size * ratio) for size in x.shape[2:])
    pad_h = math.ceil(x.shape[2] * ratio / stride) * stride - height
    pad_w = math.ceil(x.shape[3] * ratio / stride) * stride - width
    x = nn.functional.interpolate(x, size=(height, width), mode='bilinear', align_corners=False)
    return nn.functional.pad(x, [0, pad_w, 0, pad_h], value=0.447)  # 114 / 255


def non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False,
                        multi_label=False, max_det=300, max_nms=30000, max_wh=7680, labels=None):
    """Decoded outputs (b, N, 5 + nc) -> per image a (n, 6) tensor [x1, y1, x2, y2, conf, cls].
    conf = objectness * class score; multi_label keeps each class above conf_thres (val does);
    labels: per image rows like pred's, joined after the confidence filter (--save-hybrid)."""
    time_limit = 0.5 + 0.05 * pred.shape[0]
    start = clock(pred.device)  # once a GPU has finished the forward: it would eat the limit
    out = [torch.zeros((0, 6), device=pred.device)] * pred.shape[0]
    for i, x in enumerate(pred):
        x = x[x[:, 4] > conf_thres]
        if labels is not None:
            x = torch.cat((x, labels[i]), 0)
        scores = x[:, 5:] * x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        if multi_label and scores.shape[1] > 1:
            box_index, cls = (scores > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[box_index], scores[box_index, cls, None], cls[:, None].float()), 1)
        else:
            conf, cls = scores.max(1, keepdim=True)
            x = torch.cat((box, conf, cls.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if not len(x):
            continue
        x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        offsets = x[:, 5:6] * (0 if agnostic else max_wh)  # classes apart: they never overlap
        survivors = torchvision_nms()(x[:, :4] + offsets, x[:, 4], iou_thres)[:max_det]
        out[i] = x[survivors]
        if time.perf_counter() - start > time_limit:
            print(f'WARNING: NMS time limit {time_limit:.3f}s exceeded', file=sys.stderr)
            break
    return out


def scale_boxes(boxes, from_shape, to_shape, ratio_pad=None):
    """xyxy boxes from the letterboxed image (h, w) back to the original image (h, w), clipped."""
    if ratio_pad is None:
        gain = min(from_shape[0] / to_shape[0], from_shape[1] / to_shape[1])
        pad = (from_shape[1] - to_shape[1] * gain) / 2, (from_shape[0] - to_shape[0] * gain) / 2
    else:
        gain, pad = ratio_pad
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - pad[0]) / gain).clamp(0, to_shape[1])
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - pad[1]) / gain).clamp(0, to_shape[0])
    return boxes
