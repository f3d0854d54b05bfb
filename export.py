"""
Export a YOLOv5 checkpoint, and run what was exported: this file owns the exported formats, writing them and reading
them back.

    python export.py --weights yolov5n.pt --include torchscript onnx [--img 640] [--batch 1] [--dynamic] [--half]

writes yolov5n.torchscript and yolov5n.onnx beside the weights. Each holds the model with one output, as in the
original: the decoded predictions (batch, anchors, 5 + classes), rows [xc, yc, w, h, objectness, class scores...] in
input pixels, before NMS; and the metadata (stride, class names) where the original keeps it. Each file is loaded back
and checked against the PyTorch model before the export says it succeeded.

load_any(path) reads a checkpoint or an exported file behind the model's call interface: detect.py, train.py
--val-only and hubconf.py run all three alike, at the same input sizes, with the same detections. TorchScript needs
torch alone. ONNX runs through OpenCV's DNN module; the onnx package is needed to write it (pip install onnx), never
to read it. Both files compute their sizes from their input: they run at any image size and batch. A TorchScript
file runs on the device it was exported on (--device): its traced grids are made there.
On top of model.py and data.py; never imports detect.py or train.py.
"""
import argparse
import ast
import importlib.util
import json
import os
import sys
import time
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from model import Detect, load_model
from support.cli import check_img_size, device_name, number, select_device, weights_file

SUFFIXES = {'torchscript': '.torchscript', 'onnx': '.onnx'}  # --include: the file each format writes
MAX_OPSET = getattr(torch.onnx._constants, 'ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET', 20)  # torch's exporter here


class Traceable(nn.Module):
    """The model as it is exported: its one output is the decoded predictions (the raw maps are for training)."""
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.names = model.names
        # the grids made from the traced sizes, not taken from Detect's cache (a cached grid would be traced as a
        # constant of the export size): the traced TorchScript file then runs at any input size
        model.detect.cell_offsets = Detect.cell_offsets.__wrapped__
        self.eval()  # and so it stays: torch.onnx.export leaves a model in the mode it found it in

    def forward(self, x):
        return self.model(x)[0]


# ----------------------------------------------------------------------------------------------
# Reading the files back, behind the model's call interface
class Exported(nn.Module):
    """An exported file that answers as model.py's YOLOv5 does in eval mode: model(x), x a float (b, 3, h, w) batch
    in [0, 1], gives (decoded predictions in x's pixels, None for the raw maps); .names and .nc as the model's.
    A file whose sizes are fixed inside (the original's ONNX export without --dynamic) gets x centred in its size on
    the letterbox grey, in batches of its own size: the image the original's detect.py letterboxes for it; the boxes
    come back moved to x's pixels. train.py --val-only gives it square images, as the original's val.py does."""
    def __init__(self, run, names, dtype=torch.float32, fixed=None, max_stride=32):
        super().__init__()
        self.run = run
        self.names = names
        self.nc = len(names)
        self.dtype = dtype
        self.fixed = fixed
        self.where = nn.Parameter(torch.empty(0), requires_grad=False)  # train.py's validate() finds the device here
        self.max_stride = max_stride  # image sizes are multiples of it

    def forward(self, x):
        try:
            return self.predictions(x), None
        except (RuntimeError, cv2.error) as e:
            raise ValueError(f'the exported file does not run at {x.shape[2]}x{x.shape[3]} '
                             f'({str(e).strip().splitlines()[-1][:200]}); export it again') from None

    def predictions(self, x):
        if self.fixed is None:
            return self.run(x.to(self.dtype)).float()
        b, _, h, w = self.fixed
        if x.shape[2] > h or x.shape[3] > w:
            raise ValueError(f'this ONNX file takes images up to {h}x{w}, not {x.shape[2]}x{x.shape[3]}: '
                             f'use --img {min(h, w)} or export again with --img {x.shape[2]} {x.shape[3]}')
        top, left = (h - x.shape[2]) // 2, (w - x.shape[3]) // 2
        x = nn.functional.pad(x, (left, w - x.shape[3] - left, top, h - x.shape[2] - top), value=114 / 255)
        blank = lambda c: c.new_zeros((b - len(c), *c.shape[1:]))  # fills up the file's fixed batch
        y = torch.cat([self.run(torch.cat((c, blank(c))))[:len(c)] for c in x.split(b)])
        y[..., 0] -= left  # box centres back to x's pixels
        y[..., 1] -= top
        return y

    def checked(self, path, img=None):
        """Itself, once a run on a blank image (img square, if given) shows an output that its metadata describes:
        (batch, boxes, 5 + one score per class name). Raises ValueError naming path."""
        size = check_img_size(img, stride=self.max_stride) if img else 2 * self.max_stride
        shape = self.fixed or (1, 3, size, size)
        try:
            with torch.no_grad():
                y = self(torch.zeros(1, 3, *shape[2:], dtype=torch.float32, device=self.where.device))[0]
        except (RuntimeError, ValueError, cv2.error) as e:
            raise ValueError(f'{path}: it does not run: {str(e).strip()[-300:]}') from None
        if y.ndim != 3 or y.shape[2] < 6:
            raise ValueError(f'{path}: not a detection model: its output is {tuple(y.shape)}, not (batch, boxes, 5 + '
                             f'classes); a classifier or another kind of model?')
        if y.shape[2] - 5 != self.nc:
            raise ValueError(f'{path}: its metadata names {self.nc} classes, its output scores {y.shape[2] - 5}')
        return self


def class_names(path, text):
    """The names as export.py writes them (a JSON list) or as the original's export does (a dict {0: 'person'...}),
    each a string. Raises ValueError naming path for anything else."""
    if not text:
        raise ValueError(f'{path}: no class names inside: not a file of export.py or of the original\'s export.py')
    try:
        names = ast.literal_eval(text) if isinstance(text, str) else text  # (literals only: nothing runs)
        if isinstance(names, dict):
            keys = sorted(names)
            if keys != list(range(len(keys))):
                raise ValueError
            names = [names[k] for k in keys]
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (str, int)) for n in names):
            raise ValueError
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f'{path}: its class names {str(text)[:60]!r} are not a list or {{index: name}} of names') \
            from None
    return [str(n) for n in names]


def stride_of(path, text):
    """The largest stride in a file's metadata: a power of 2 from 8 to 128."""
    try:
        stride = int(str(text))
    except ValueError:
        stride = 0
    if stride not in (8, 16, 32, 64, 128):
        raise ValueError(f'{path}: its stride {str(text)[:20]!r} is not a model\'s (32, or 64 for P6)')
    return stride


def load_torchscript(path, device, trust=False, img=None):
    """A TorchScript file: code, which loading it runs. So it is loaded only if trust, or if whoever runs this says
    yes at the prompt (on a terminal)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f'{path}: not a TorchScript file (not a zip archive)')
    if not trust and not confirmed(f'{path} is TorchScript: loading it runs the code it holds. Run it? [y/N] '):
        raise ValueError(f'{path}: a TorchScript file holds code, which loading it runs; give --trust-code (or '
                         f'trust=True in Python) if you trust where it comes from')
    files = {'config.txt': ''}  # the metadata file that export_torchscript() writes into the archive
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)  # TorchScript, deprecated in torch, is the format asked for
            ts = torch.jit.load(str(path), map_location=device, _extra_files=files).eval()
        meta = json.loads(files['config.txt'] or '{}')
        dtype = next(ts.parameters()).dtype
    except (RuntimeError, ValueError, StopIteration) as e:  # a damaged archive, or no model inside
        raise ValueError(f'{path}: not a TorchScript model ({str(e).strip().splitlines()[0][:150]})') from None
    if not isinstance(meta, dict):
        raise ValueError(f'{path}: its config.txt is not a dict of metadata')
    names = class_names(path, meta.get('names'))
    return Exported(ts, names, dtype, max_stride=stride_of(path, meta.get('stride', 32))).checked(path, img)


def confirmed(question):
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ('y', 'yes')


# ONNX through OpenCV's DNN module, on the CPU. OpenCV works out every size in the graph once, as it reads the file,
# from the input shape the file declares, and it reads neither a free (dynamic) size nor the metadata. So the file is
# read here off protobuf's wire format by hand (a few lines: with the onnx package, running a file would need it too),
# and given to OpenCV once per input shape, declared as that shape: export.py's graphs compute their sizes from their
# input.
def _varint(buf, i):
    value, shift = 0, 0
    while True:
        value, shift, i = value | (buf[i] & 0x7F) << shift, shift + 7, i + 1
        if buf[i - 1] < 0x80:
            return value, i


def _encode(n):
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _ld(number, payload):  # a length-delimited field
    return _encode(number << 3 | 2) + _encode(len(payload)) + payload


def _fields(buf):
    """Yields (field number, value, the field's bytes) of a protobuf message; value an int for a varint, bytes for a
    length-delimited field: the only two kinds in the ONNX messages read here (model, graph, value info, type, shape,
    dimension, metadata entry)."""
    i = 0
    while i < len(buf):
        start, (key, i) = i, _varint(buf, i)
        if key & 7 == 0:
            value, i = _varint(buf, i)
        elif key & 7 == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError('not an ONNX model')
        yield key >> 3, value, buf[start:i]


def _field(buf, numbers):
    """The first field numbers[0] of buf, then the first field numbers[1] inside it, and so on down."""
    for n in numbers:
        buf = next(v for f, v, _ in _fields(buf) if f == n)
    return buf


def _dict(buf):
    return {f: value for f, value, _ in _fields(buf)}


def _replaced(buf, numbers, payload):
    """buf with the field _field(buf, numbers) replaced by payload, the lengths of the fields around it made anew."""
    out, found = [], False
    for f, value, raw in _fields(buf):
        if f == numbers[0] and not found:
            found, raw = True, _ld(f, _replaced(value, numbers[1:], payload) if numbers[1:] else payload)
        out.append(raw)
    return b''.join(out)


INPUT_SHAPE = 7, 11, 2, 1, 2  # ModelProto.graph -> first input -> its type -> tensor type -> shape


class OpenCVNet:
    """An ONNX file run by OpenCV: read once per input shape, with that shape declared, where the graph's sizes
    follow its input (export.py's files, and any with free sizes); else read once, at the size the file declares."""
    def __init__(self, path):
        self.path, self.model, self.meta, self.nets = path, memoryview(Path(path).read_bytes()), {}, {}
        for f, entry, _ in _fields(self.model):
            if f == 14:  # ModelProto.metadata_props: StringStringEntryProto (key = 1, value = 2)
                kv = _dict(entry)
                self.meta[bytes(kv.get(1, b'')).decode(errors='replace')] = bytes(kv.get(2, b'')).decode(
                    errors='replace')
        # TensorShapeProto.dim (1): Dimension.dim_value (1), or a dim_param (2) where the size is free
        self.shape = [_dict(dim).get(1) for _, dim, _ in _fields(_field(self.model, INPUT_SHAPE))]
        self.any_size = None in self.shape or self.meta.get('any_size') == 'true'
        # the predictions: the graph's first output (ModelProto.graph -> output -> name); the original's files from
        # today's torch have the raw maps after it
        self.output = bytes(_field(self.model, (7, 12, 1))).decode(errors='replace')

    def __call__(self, x):
        shape = tuple(x.shape) if self.any_size else tuple(self.shape)
        if shape not in self.nets:
            if self.any_size:
                dims = b''.join(_ld(1, _encode(1 << 3) + _encode(n)) for n in shape)  # dim_values (varints)
                model = np.frombuffer(_replaced(self.model, INPUT_SHAPE, dims), np.uint8)  # (bytes crash OpenCV)
                self.nets[shape] = cv2.dnn.readNetFromONNX(model)
            else:  # read by its path: its weights may lie in a file of their own beside it
                self.nets[shape] = cv2.dnn.readNetFromONNX(str(self.path))
        self.nets[shape].setInput(x.detach().float().cpu().numpy())  # OpenCV computes in fp32 on the CPU
        return torch.tensor(self.nets[shape].forward(self.output), device=x.device)  # a copy: OpenCV reuses it


class RuntimeNet:
    """An ONNX file run by onnxruntime (an optional package), for the files OpenCV's DNN module does not read: the
    original's, among them."""
    def __init__(self, path, output):
        import onnxruntime  # only here: nothing else needs it
        self.session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        self.input = self.session.get_inputs()[0].name
        self.output = output

    def __call__(self, x):
        try:
            y = self.session.run([self.output], {self.input: x.detach().float().cpu().numpy()})[0]
        except Exception as e:  # onnxruntime's own kinds
            raise RuntimeError(str(e)) from None
        return torch.from_numpy(y).to(x.device)


def load_onnx(path, device, img=None):
    """An ONNX file: through OpenCV's DNN module, else (a file it does not read) through onnxruntime if that is
    installed, else a message that says to install it."""
    try:
        net = OpenCVNet(path)
    except (ValueError, IndexError, StopIteration, TypeError):
        raise ValueError(f'{path}: not an ONNX model') from None
    names = class_names(path, net.meta.get('names'))
    stride = stride_of(path, net.meta.get('stride', 32))
    fixed = None if net.any_size else net.shape
    if fixed is not None and not all(isinstance(n, int) and 0 < n <= 8192 for n in fixed):
        raise ValueError(f'{path}: its input size {fixed} is not (batch, 3, height, width)')
    try:
        return Exported(net, names, fixed=fixed, max_stride=stride).checked(path, img)
    except ValueError as e:
        if 'does not run' not in str(e):  # it ran: its output is what is wrong
            raise
        opencv = str(e)
    if not importlib.util.find_spec('onnxruntime'):
        raise ValueError(f'{opencv}. OpenCV\'s DNN module does not read this ONNX file; onnxruntime does: pip install '
                         f'onnxruntime') from None
    try:
        runtime = RuntimeNet(path, net.output)
    except Exception as e:  # onnxruntime raises its own kinds
        raise ValueError(f'{path}: onnxruntime cannot run it either: {str(e).strip()[:300]}') from None
    return Exported(runtime, names, fixed=fixed, max_stride=stride).checked(path, img)


class Ensemble(nn.Module):
    """Several models as one, as the original's: their predictions pooled for NMS; the first one's names."""
    def __init__(self, models):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.names = models[0].names
        self.nc = models[0].nc
        self.max_stride = max(m.max_stride for m in models)
        self.fixed = next((m.fixed for m in models if getattr(m, 'fixed', None) is not None), None)
        self.where = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x):
        return torch.cat([m(x)[0] for m in self.models], 1), None

    def forward_augment(self, x):
        return torch.cat([m.forward_augment(x)[0] for m in self.models], 1), None


def load_any(path, device='cpu', fuse=False, trust=False, img=None, augment=False):
    """A checkpoint (as model.py's load_model) or an exported .torchscript / .onnx file, all answering model(x) with
    (decoded predictions, raw maps or None), .names and .nc; a list of them as an Ensemble. trust: run TorchScript's
    code; img, augment: refused here if the file cannot run them. Raises ValueError or FileNotFoundError."""
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            return load_any(path[0], device, fuse, trust, img, augment)
        models = [load_any(p, device, fuse, trust, img, augment) for p in path]
        if len({m.nc for m in models}) > 1:
            raise ValueError(f'{", ".join(map(str, path))}: an ensemble of models of different classes')
        print(f'Ensemble created with {", ".join(map(str, path))}')
        return Ensemble(models)
    if not str(path).endswith(tuple(SUFFIXES.values())):
        return load_model(path, device, fuse)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such file')
    if augment:
        raise ValueError(f'{path}: --augment (test-time augmentation) needs the model as a .pt: an exported file '
                         f'has one output, not the levels it pools')
    if str(path).endswith('.onnx'):
        model = load_onnx(path, torch.device(device), img)
    else:
        model = load_torchscript(path, torch.device(device), trust, img)
    if img and model.fixed is not None and check_img_size(img, stride=model.max_stride) > min(model.fixed[2:]):
        raise ValueError(f'{path}: this ONNX file takes images up to {model.fixed[2]}x{model.fixed[3]}: use --img '
                         f'{min(model.fixed[2:])} or export again with --img {img}')
    return model


# ----------------------------------------------------------------------------------------------
# Writing them
def import_onnx():
    try:
        import onnx  # only here: the exporter's last step writes through it; nothing else in this repo needs it
    except ImportError:
        raise ImportError('ONNX export needs the onnx package, which requirements.txt leaves out (running an .onnx '
                          'file does not need it): pip install onnx') from None
    return onnx


def export_torchscript(net, im, file, meta):
    ts = torch.jit.trace(net, im, strict=False, check_trace=False)  # checked below by loading the file back
    ts.save(str(file), _extra_files={'config.txt': json.dumps(meta)})  # the original's metadata file and keys


def export_onnx(net, im, file, meta, opset, dynamic, out_shape):
    onnx = import_onnx()
    axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}, 'output0': {0: 'batch', 1: 'anchors'}}
    with warnings.catch_warnings():
        # torch's TorchScript-based exporter (warned as legacy): the newer one needs onnxscript too, and this one's
        # graphs are those that OpenCV's DNN module reads
        warnings.simplefilter('ignore', DeprecationWarning)
        # free sizes always: the graph then computes its sizes from its input, and OpenCV runs it at any size
        torch.onnx.export(net, im, str(file), opset_version=opset, input_names=['images'], output_names=['output0'],
                          dynamic_axes=axes, dynamo=False)
    proto = onnx.load(str(file))
    if not dynamic:  # declared: the export size, for runtimes that take fixed sizes from the file, as the original's
        for value, shape in ((proto.graph.input[0], im.shape), (proto.graph.output[0], out_shape)):
            for dim, n in zip(value.type.tensor_type.shape.dim, shape):
                dim.dim_value = n
    # the original's metadata_props keys, where its readers find the stride and names; any_size for OpenCVNet
    for k, v in dict(meta, any_size=True).items():
        proto.metadata_props.add(key=k, value=json.dumps(v))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(file))


def difference(a, b, shape):
    """The largest difference between two outputs, boxes as fractions of the input size (h, w), scores as they are."""
    scale = torch.tensor([shape[1], shape[0]] * 2 + [1] * (a.shape[-1] - 4), device=a.device)
    return float(((a.float() - b.float()).abs() / scale).max())


def run(weights='yolov5n.pt', include=('torchscript',), imgsz=(640, 640), batch_size=1, device='cpu', half=False,
        dynamic=False, opset=17):
    """Writes the checkpoint's model in each format of include beside it, loads each back and checks it on a random
    image against the fp32 PyTorch model; returns the files written. The original's export.run, with its names.
    imgsz: (h, w) or one number for both. Raises ValueError if a file disagrees, ImportError without onnx."""
    t0 = time.time()
    if 'onnx' in include:
        import_onnx()  # before any work: a missing package is known at once
    device, sizes = select_device(device), [imgsz] if isinstance(imgsz, int) else list(imgsz)
    model = load_model(weights, device, fuse=True)
    img = [check_img_size(s, stride=model.max_stride) for s in (sizes * 2)[:2]]  # (h, w), multiples of the stride
    net = Traceable(model)
    im = torch.rand(batch_size, 3, *img, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        ref = net(im)
    if half:  # 16-bit weights and input: half the file; the check below measures what it costs
        net, im = net.half(), im.half()
    meta = dict(shape=list(im.shape), stride=model.max_stride, names=list(net.names))
    print(f'PyTorch: {weights} with output shape {tuple(ref.shape)} ({os.path.getsize(weights) / 1e6:.1f} MB)')
    files, tolerance = [], 0.02 if half else 1e-3
    for fmt in include:
        t, file = time.time(), Path(weights).with_suffix(SUFFIXES[fmt])
        # written beside file, checked, then renamed: a failed or killed export leaves file as it was
        tmp = file.with_name(f'.{file.stem}.{os.getpid()}.tmp{file.suffix}')
        try:
            diff = write_checked(fmt, net, im, tmp, meta, opset, dynamic, ref, img, tolerance, device, file)
            os.replace(tmp, file)
        except OSError as e:
            raise ValueError(f'{file}: cannot save ({e.strerror or e}); nothing written') from None
        finally:
            tmp.unlink(missing_ok=True)
        print(f'{fmt}: loaded back, outputs within {diff:.2g} of PyTorch (boxes as fractions of the image)')
        print(f'{fmt}: saved {file} ({file.stat().st_size / 1e6:.1f} MB) in {time.time() - t:.1f}s')
        files.append(str(file))
    print(f'Export complete ({time.time() - t0:.1f}s). Run it with:\n'
          f'  python detect.py img.jpg --weights {files[-1]}\n'
          f'  python train.py --val-only --weights {files[-1]} --data coco128.yaml\n'
          f'  torch.hub.load(\'.\', \'custom\', path=\'{files[-1]}\', source=\'local\')')
    return files


def write_checked(fmt, net, im, path, meta, opset, dynamic, ref, img, tolerance, device, name):
    """The model written to path in fmt, loaded back and compared with the PyTorch outputs ref; errors say name."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)  # the traced size ops: intended
        warnings.simplefilter('ignore', FutureWarning)  # TorchScript, deprecated in torch, is the format asked for
        if fmt == 'torchscript':
            export_torchscript(net, im, path, meta)
        else:
            try:
                export_onnx(net, im, path, meta, opset, dynamic, ref.shape)
            except (RuntimeError, ValueError, TypeError) as e:  # torch's errors for an opset it cannot export at
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise ValueError(f'ONNX opset {opset}: torch cannot export this model at it ({reason}); try '
                                 f'--opset 17') from None
    try:
        with torch.no_grad():
            diff = difference(load_any(path, device, trust=True)(im.float())[0], ref, img)  # ours
    except ValueError as e:
        why = str(e).split(': ', 1)[-1]
        raise ValueError(f'{name}: the export does not load back, nothing written: {why}') from None
    if diff > tolerance:
        raise ValueError(f'{name}: does not reproduce the model: outputs differ by {diff:.3g} > {tolerance}')
    return diff


def pt_weights(text):  # an argparse type: what export.py exports from
    if text.endswith(tuple(SUFFIXES.values())):
        raise argparse.ArgumentTypeError(f'{text}: already exported; export from the checkpoint (.pt)')
    return weights_file(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--weights', nargs='+', type=pt_weights, default=['yolov5n.pt'], help='official yolov5*.pt or ours')
    p.add_argument('--include', nargs='+', choices=SUFFIXES, default=['torchscript'], help='formats to write')
    p.add_argument('--img', '--img-size', '--imgsz', nargs='+', type=number(int, 1), default=[640],
                   help='input size: h w, or one number for both')
    p.add_argument('--batch', '--batch-size', type=number(int, 1), default=1, help='batch size (ONNX declares it)')
    p.add_argument('--device', type=device_name, default='cpu', help='cpu, 0, cuda:0 ... (TorchScript runs there)')
    p.add_argument('--half', action='store_true', help='fp16 weights and input (OpenCV computes them in fp32)')
    p.add_argument('--dynamic', action='store_true', help='ONNX: declare free batch and sizes (OpenCV runs either)')
    p.add_argument('--opset', type=number(int, 7, MAX_OPSET), default=17, help='ONNX opset version')
    opt = p.parse_args(argv)
    if len(opt.img) > 2:
        p.error(f'argument --img: one or two numbers (h w), not {len(opt.img)}')
    return opt


def main(opt):
    for weights in opt.weights:
        try:
            run(weights, opt.include, opt.img, opt.batch, opt.device, opt.half, opt.dynamic, opt.opset)
        except (ImportError, ValueError, OSError) as e:
            raise SystemExit(f'ERROR: {e}') from None
    return 0


if __name__ == '__main__':
    sys.exit(main(parse_args()))
