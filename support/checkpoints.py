"""
Checkpoints on disk: the official yolov5*.pt read without the original's code (and without running anything
from their pickle), ours (plain dicts of tensors and the model's config), their checks, saving, stripping.
What a checkpoint's config means is model.py's: YOLOv5(**config) is the model it describes.
"""
import os
import zipfile

import numpy as np
import torch

from support.datasets import MAX_CLASSES
from support.downloads import download
from support.files import WriteError, save_torch


OFFICIAL = {f'yolov5{s}{p6}.pt' for s in 'nsmlx' for p6 in ('', '6')}  # the release's files, fetched by name
RELEASE_URL = 'https://github.com/ultralytics/yolov5/releases/download/v7.0/'


class _Stub:
    """Stands in for every class of the original code and every torch module it pickles: an attribute dict only."""
    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else state[0] or {})


_NP = (getattr(np, '_core', None) or np.core).multiarray
# harmless globals beside the classes: the numpy arrays and numbers that the original's training runs leave behind
_NUMPY = {f'numpy.{m}multiarray.{k}': getattr(_NP, k) for m in ('core.', '_core.') for k in ('_reconstruct', 'scalar')}
_NUMPY.update({'numpy.ndarray': np.ndarray, 'numpy.dtype': np.dtype},
              **{f'numpy.dtypes.{k}': v for k, v in vars(np.dtypes).items() if isinstance(v, type)})


def _unpickle_official(path):
    """The checkpoint through torch's weights-only unpickler, the original's classes read as attribute holders:
    every other global it names is refused before anything is read, so a malicious pickle cannot run code."""
    allowed = dict(_NUMPY)  # all numpy's dtype classes: the unpickler also checks the types of the dtypes it builds
    for g in torch.serialization.get_unsafe_globals_in_checkpoint(path):  # read from the pickle, nothing run
        if g.startswith(('models.', 'torch.nn.modules.')):
            allowed[g] = _Stub
        elif g not in _NUMPY:
            raise ValueError(f'refused to load global {g}')
    with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
        return torch.load(path, map_location='cpu', weights_only=True)


def _state_dict_of(stub, prefix=''):
    """The state dict of a stub module tree, with the same keys that nn.Module.state_dict() gives."""
    tensors = {**vars(stub).get('_parameters', {}), **vars(stub).get('_buffers', {})}
    sd = {prefix + k: v for k, v in tensors.items() if v is not None}
    for k, child in vars(stub).get('_modules', {}).items():
        if child is not None:
            sd.update(_state_dict_of(child, f'{prefix}{k}.'))
    return sd


def read_official(path):
    """(config, state dict) of an official checkpoint: what model.YOLOv5(**config) needs, and the weights by
    name (the anchors among them)."""
    ckpt = _unpickle_official(path)
    stub = ckpt.get('ema') or ckpt.get('model') if isinstance(ckpt, dict) else None
    if not isinstance(stub, _Stub) or not isinstance(getattr(stub, 'yaml', None), dict):
        raise ValueError('no YOLOv5 model inside')
    cfg = stub.yaml
    layers = len(cfg.get('backbone', [])), len(cfg.get('head', []))
    if layers not in ((10, 15), (12, 22)):  # P5 (yolov5n ... x), P6 (yolov5n6 ... x6)
        raise ValueError('not a YOLOv5 v6+ model (the yolov5n/s/m/l/x or yolov5n6/s6/m6/l6/x6 architecture)')
    detect = stub._modules['model']._modules[str(sum(layers) - 1)]
    names = stub.names if isinstance(stub.names, list) else [stub.names[i] for i in sorted(stub.names)]
    config = dict(arch='p6' if layers[0] == 12 else 'p5', scale=[cfg['depth_multiple'], cfg['width_multiple']],
                  nc=int(detect.nc), names=names)
    return config, _state_dict_of(stub)


def config_of(ckpt):
    """The model config in one of our checkpoints: its config entry, or in older ones the same keys at its top
    level (p6 for the architecture). A KeyError if it has none."""
    if 'config' in ckpt:
        return ckpt['config']
    config = {k: ckpt[k] for k in ('scale', 'nc', 'names')}
    return dict(config, arch='p6' if ckpt.get('p6') else 'p5')


def _is_number(x, low, high):
    return type(x) in (int, float) and low < x <= high


def checked_config(path, config, scales='nsmlx'):
    """A checkpoint's model config, checked before a model is built from it: an architecture name, a scale
    among scales or (depth, width) multiples in (0, 4], 1 to MAX_CLASSES classes with a name each, anchors (if
    given) as levels of (w, h) pixel pairs. A hand-made or damaged checkpoint gets a ValueError naming the file,
    not a traceback from deep inside the model. Keys it does not know (what an edited model.py adds) pass:
    model.from_config says whether the code takes them."""
    if not isinstance(config, dict):
        raise ValueError(f'{path}: its model config is not a dict')
    scale, nc, names, anchors = (config.get(k) for k in ('scale', 'nc', 'names', 'anchors'))
    pair = isinstance(scale, (list, tuple)) and len(scale) == 2 and all(_is_number(x, 0, 4) for x in scale)
    if not (scale in scales if isinstance(scale, str) else pair):
        raise ValueError(f'{path}: scale {scale!r} is not one of {", ".join(scales)} or (depth, width) '
                         f'multiples in (0, 4]')
    if type(nc) is not int or not 0 < nc <= MAX_CLASSES:
        raise ValueError(f'{path}: nc {nc!r} is not a number of classes from 1 to {MAX_CLASSES}')
    if not isinstance(names, (list, tuple)) or len(names) != nc:
        count = len(names) if isinstance(names, (list, tuple)) else 'no'
        raise ValueError(f'{path}: {count} class names for its {nc} classes')
    if not isinstance(config.get('arch', 'p5'), str):
        raise ValueError(f'{path}: arch {config["arch"]!r} is not the name of an architecture')
    levels = anchors if isinstance(anchors, (list, tuple)) and 0 < len(anchors) <= 8 else [[]]
    if anchors is not None and not all(isinstance(level, (list, tuple)) and len(level) == len(levels[0])
                                       and 0 < len(level) <= 40 and len(level) % 2 == 0
                                       and all(_is_number(x, 0, 1e5) for x in level) for level in levels):
        raise ValueError(f'{path}: anchors {str(anchors)[:80]} are not levels of (w, h) pixel pairs')
    return dict(config, names=[str(x) for x in names])


def checked_weights(path, weights):
    """A state dict of tensors, in fp32 (official files are fp16)."""
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise ValueError(f'{path}: its weights are not a dict of tensors')
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def read_checkpoint(path):
    """(model config, fp32 state dict) of an official yolov5*.pt (downloaded if missing) or of one of ours (a
    plain dict that torch.load(weights_only=True) reads), without building a model: model.from_config builds
    it. Raises ValueError or FileNotFoundError."""
    path = str(path)
    if not os.path.exists(path):
        if os.path.basename(path) not in OFFICIAL:
            raise FileNotFoundError(f'{path}: no such weights file')
        download(RELEASE_URL + os.path.basename(path), path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f'{path}: not a PyTorch checkpoint (not a zip archive)')
    try:  # ours first: a plain dict of tensors and the config (anything else fails a lookup)
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        config = config_of(ckpt)
        weights = ckpt.get('ema') or ckpt['model']
    except Exception:
        try:
            config, weights = read_official(path)
        except Exception as e:
            raise ValueError(f'{path}: not a YOLOv5 checkpoint ({e})') from None
    return checked_config(path, config), checked_weights(path, weights)


def first_difference(model, weights):
    """Where the state dict weights first differs from model's, by layer number (model.N. keys), in words ('layer 13
    (C3) differs: ...'), or None if it fits."""
    own = model.state_dict()

    def layer_number(key):
        part = key.split('.')[1:2]
        return int(part[0]) if part and part[0].isdigit() else -1
    for key in sorted(own.keys() | weights.keys(), key=lambda k: (layer_number(k), k)):
        ours = tuple(own[key].shape) if key in own else 'missing'
        theirs = tuple(weights[key].shape) if key in weights else 'missing'
        if ours != theirs:
            i = layer_number(key)
            layer = type(model.model[i]).__name__ if 0 <= i < len(model.model) else 'none'
            return f'layer {i} ({layer}) differs: {key} is {theirs} there, {ours} in model.py'
    return None


def transfer(model, weights, skip=()):
    """Loads each tensor of weights whose name and shape fit model (none named in skip): an edited block starts from
    scratch, the rest from the weights. Returns how many."""
    own = model.state_dict()
    fits = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape and not any(s in k for s in skip)}
    model.load_state_dict(fits, strict=False)
    return len(fits)


def save_checkpoint(ckpt, path):
    """ckpt written to path atomically; a failed write ends the run, saying what path still holds."""
    try:
        save_torch(ckpt, path)
    except WriteError as e:
        kept = 'it still holds the last epoch saved' if os.path.exists(path) else 'nothing was saved'
        raise SystemExit(f'ERROR: cannot write {path} ({e.reason}); {kept}') from None


def to_cpu(obj):
    """A copy of a checkpoint's dict with every tensor copied to the CPU: kept for later, off the GPU's memory."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to('cpu', copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    return type(obj)(map(to_cpu, obj)) if isinstance(obj, (list, tuple)) else obj


def strip_checkpoint(path):
    """As the original at the end of a run: only the EMA's weights, in fp16, and no optimizer: the file people ship."""
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    if 'ema' not in ckpt:  # stripped already
        return
    ckpt['model'] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt.pop('ema').items()}
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ('optimizer', 'scaler', 'updates')}, path)


def read_run_checkpoint(path):
    """The checkpoint that --resume continues: a last.pt that a training run here wrote. Anything else (official
    weights, a damaged file, a pickle that would run code: nothing in it is run) ends the program with a message."""
    needs, ckpt, damage = [], None, None
    try:
        needs = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # read from the pickle, nothing run
        ckpt = None if needs else torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file
        damage = str(e).split('. ')[0][:150]
    if isinstance(ckpt, dict) and isinstance(ckpt.get('opt'), dict) and type(ckpt.get('epoch')) is int:
        return ckpt
    if needs:
        why = f'it holds {needs[0]}, which needs code to load (official weights, or another program\'s file)'
    else:
        why = f'it is damaged ({damage})' if damage else 'it holds no training state'
    raise SystemExit(f'ERROR: --resume {path}: not the last.pt of a training run: {why}. To fine-tune from its '
                     f'weights, give it to --weights')
