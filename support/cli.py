"""
The command line and the machine: argparse types (a bad value ends the program naming its flag, exit code 2),
the one way a bad input ends a run (or_exit), devices and their clocks, the mixed-precision choice, autobatch.
"""
import argparse
import copy
import functools
import glob
import importlib.util
import math
import os
import sys
import time
import zipfile

import cv2
import numpy as np
import torch

from support.checkpoints import OFFICIAL
from support.data_yaml import read_yaml


def memory_used(device):
    """The GPU memory this process holds, as the training line shows it."""
    return f'{torch.cuda.memory_reserved(device) / 1e9:.3g}G' if device.type == 'cuda' else '0G'


# The values each hyperparameter may take, (low, high) with both ends in, but for the keys of ABOVE_LOW, which must
# be above low (momentum 0 is not Nesterov's SGD, an lr of 0 learns nothing). --hyp is checked before a run starts.
HYP_RANGES = dict(lr0=(0, 1), lrf=(0, 1), momentum=(0, 0.999), weight_decay=(0, 0.1), warmup_epochs=(0, 1000),
                  warmup_momentum=(0, 0.999), warmup_bias_lr=(0, 1), nbs=(1, 8192), box=(0, 100), cls=(0, 100),
                  cls_pw=(0, 100), obj=(0, 100), obj_pw=(0, 100), anchor_t=(1, 100), fl_gamma=(0, 10),
                  label_smoothing=(0, 0.999), hsv_h=(0, 0.5), hsv_s=(0, 1), hsv_v=(0, 1), degrees=(0, 180),
                  translate=(0, 0.9), scale=(0, 0.95), shear=(0, 89), perspective=(0, 0.01))
ABOVE_LOW = {'lr0', 'lrf', 'momentum', 'cls_pw', 'obj_pw'}


def hyp_value(key, value, where):
    """value (a number) checked against key's range (probabilities: 0 to 1); an ArgumentTypeError naming where."""
    low, high = HYP_RANGES.get(key, (0, 1) if key not in HYP_RANGES and _is_probability(key) else (-math.inf, math.inf))
    inside = low < value <= high if key in ABOVE_LOW else low <= value <= high
    if not (math.isfinite(value) and inside):
        interval = f'({low}, {high}]' if key in ABOVE_LOW else f'[{low}, {high}]'
        raise argparse.ArgumentTypeError(f'{where}: {key}: {value:g} is not in {interval}')
    return value


def _is_probability(key):  # the augmentations' probabilities (data.py's AUG beyond the ranges above)
    return key in ('flipud', 'fliplr', 'mosaic', 'mixup', 'blur', 'median_blur', 'to_gray', 'clahe', 'crop',
                   'brightness_contrast', 'gamma', 'jpeg')


def key_number(known, not_used=None):
    """An argparse type: KEY=NUMBER with KEY one of known's (--hyp lr0=0.02), or a YAML file of `key: number` lines
    (the original's hyp files), whose keys in not_used {key: why} are left out with a message. [(key, value), ...]."""
    def pair(key, value, where):
        if key in (not_used or {}):
            print(f'{where}: {key} is not used: {not_used[key]}', file=sys.stderr)
            return []
        if key not in known:
            raise argparse.ArgumentTypeError(f'{where}: unknown key {key!r}; known: {", ".join(known)}')
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f'{where}: {key}: {value!r} is not a number') from None
        return [(key, hyp_value(key, number, where))]

    def parse(text):
        if '=' in text:
            key, _, value = text.partition('=')
            return pair(key, value, repr(text))
        try:
            entries = read_yaml(text)
        except (OSError, ValueError) as e:
            raise argparse.ArgumentTypeError(f'{text!r} is not KEY=NUMBER nor a readable YAML file ({e})') from None
        return [kv for key, value in entries.items() for kv in pair(key, value, text)]
    return parse


def number(kind, low, high=math.inf):
    """An argparse type: an int or float in [low, high]; a bad value exits (code 2) naming the flag, before any work."""
    what = ('an integer' if kind is int else 'a number') + (f' >= {low}' if high == math.inf else f' in [{low},{high}]')

    def parse(text):
        try:
            if low <= kind(text) <= high:
                return kind(text)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f'{text!r} is not {what}')
    return parse


def batch_size(text):  # an argparse type: a batch, or -1 for the largest that fits
    if text.strip() == '-1':
        return -1
    return number(int, 1)(text)


def existing_folder(text):  # an argparse type
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f'{text}: no such folder')
    return text


def existing_file(text):  # an argparse type
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f'{text}: no such file')
    return text


def or_exit(fn, *args, **kwargs):
    """fn(*args, **kwargs), where a bad input or file (ValueError, OSError) ends the program with its message."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError) as e:
        raise SystemExit(f'ERROR: {e}')


def check_img_size(img, floor=0, stride=32):
    """img rounded up to a multiple of the stride (the 3 levels' feature maps must align), and at least floor."""
    new = max(-(-img // stride) * stride, floor)
    if new != img:
        at_least = f' and >= {floor}' if floor else ''
        print(f'WARNING: --img {img} must be a multiple of {stride}{at_least}, using {new}')
    return new


AMP_TYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'off': None}


def amp_choice(device, amp='auto'):
    """(16-bit type, or None for fp32; why) for --amp auto, fp16, bf16 or off on device. auto is fp16 on CUDA, and
    bf16 on a CPU only with AMX. Measured with yolov5n: bf16 1.8x faster than fp32 on a CPU with AMX, but slower on
    one with AVX512-BF16 alone (training 10% slower, a 640 forward 49 ms against 39 ms): that flag does not decide."""
    if amp != 'auto':
        return AMP_TYPES[amp], f'--amp {amp}'
    if device.type == 'cuda':
        return torch.float16, 'auto: CUDA'
    if torch.cpu._is_amx_tile_supported():
        return torch.bfloat16, 'auto: this CPU has AMX'
    return None, 'auto: this CPU has no AMX, where bf16 is slower than fp32'


def mixed_precision(device, amp, model, image, size):
    """--amp's 16-bit type (None: fp32), and the AMP line that says why. The model's outputs in it must agree with
    fp32's on image (a file) at size (some GPUs compute fp16 wrongly: fp32 there)."""
    dtype, why = amp_choice(device, amp)
    if dtype and not amp_agrees(model, image, size, dtype):
        print(f'AMP: WARNING: {dtype} outputs disagree with fp32 on {image}, training in fp32')
        dtype, why = None, 'the check above'
    scaling = ' with loss scaling' if dtype == torch.float16 else ''  # bf16 has fp32's range: no scaling
    print(f'AMP: mixed precision training in {dtype}{scaling} ({why})' if dtype else
          f'AMP: off, training in fp32 ({why})', flush=True)
    return dtype


@torch.inference_mode()
def amp_agrees(model, image, size, dtype):
    """Whether the model's (eval mode) outputs in dtype agree with fp32's on image resized to size x size, to 10% of
    the size for boxes, 0.1 for scores."""
    img = cv2.cvtColor(cv2.resize(cv2.imread(image), (size, size)), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].to(next(model.parameters()).device).float() / 255
    fp32 = model(x)[0]
    with torch.autocast(x.device.type, dtype=dtype):
        mixed = model(x)[0].float()
    scale = torch.tensor([size] * 4 + [1] * (fp32.shape[2] - 4), device=x.device)
    return bool(((fp32 - mixed).abs() / scale).max() < 0.1)


def half_dtype(device):
    """--half's 16-bit type: --amp auto's (None, fp32, where 16 bits would be slower)."""
    return amp_choice(device)[0]


def clock(device):
    """time.perf_counter() once device has done the work queued on it: CUDA runs behind Python, so a clock read
    without waiting times the queueing, not the work."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


@functools.lru_cache(maxsize=None)
def torchvision_nms():
    # `import torchvision` costs ~1.5 s (all its models and datasets); its compiled ops are free
    try:
        folder = importlib.util.find_spec('torchvision').submodule_search_locations[0]
        torch.ops.load_library(sorted(glob.glob(os.path.join(folder, '_C*.*')))[0])
        return torch.ops.torchvision.nms
    except Exception:
        import torchvision
        return torchvision.ops.nms


class Stopwatch:
    """Seconds spent per step (pre-process, inference, NMS), each read once the device has done its work, and the
    original's Speed line of them."""
    def __init__(self, device):
        self.device = device
        self.totals = {}
        self.last = time.perf_counter()

    def start(self):
        self.last = time.perf_counter()

    def lap(self, step):
        """Ends step (begun at the last lap or start); returns its seconds."""
        now = clock(self.device)
        seconds = now - self.last
        self.totals[step] = self.totals.get(step, 0.0) + seconds
        self.last = now
        return seconds

    def speed(self, images, shape):
        steps = ', '.join(f'{seconds * 1e3 / max(images, 1):.1f}ms {step}' for step, seconds in self.totals.items())
        return f'Speed: {steps} per image at shape {shape}'


def make_repeatable(seed):
    """Seeds torch, and asks for deterministic kernels where torch has them, on GPUs too (cuBLAS needs a fixed
    workspace for them): a run repeats itself."""
    torch.manual_seed(seed)
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(True, warn_only=True)


def out_of_memory(opt):
    """The one message for running out of GPU memory, anywhere in a run."""
    return SystemExit(f'ERROR: out of GPU memory at --batch {opt.batch} --img {opt.img}: lower --batch (e.g. '
                      f'--batch {max(opt.batch // 2, 1)}) or --img, or use more GPUs')


def select_device(device='', local_rank=None):
    """'' (CUDA if there is one), 'cpu', '0', 'cuda:1', or '0,1'. One process takes the first GPU named (train.py
    starts one process per GPU itself); under torchrun each takes its own, the LOCAL_RANK-th: --device 2,3 runs on
    GPUs 2 and 3, and without --device on GPUs 0, 1, ... Raises ValueError for a device that is not here."""
    local_rank = int(os.getenv('LOCAL_RANK', -1)) if local_rank is None else local_rank
    device = str(device).strip().lower().replace('cuda:', '').replace('cuda', '0')  # cuda: cuda:0
    if device == 'cpu' or (not device and not torch.cuda.is_available()):
        return torch.device('cpu')
    ids = device.split(',') if device else [str(i) for i in range(torch.cuda.device_count())]
    if not all(i.isdigit() for i in ids):
        raise ValueError(f'{device!r} is not cpu, a GPU index (0, 1, ...) or a list of them (0,1)')
    if max(map(int, ids)) >= torch.cuda.device_count():
        raise ValueError(f'{device!r}: no such CUDA device here ({torch.cuda.device_count()} found); try cpu')
    if local_rank >= len(ids):
        raise ValueError(f'{device or "all GPUs"!r}: {len(ids)} GPU(s) for more processes on this machine '
                         f'(LOCAL_RANK {local_rank}): torchrun --nproc_per_node {len(ids)}')
    return torch.device('cuda', int(ids[max(local_rank, 0)]))


# argparse types of the scripts' flags: a bad value ends the program with a message naming the flag, exit code 2
def device_name(text):
    try:
        select_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def checkpoint_file(text):
    if not zipfile.is_zipfile(text):  # every PyTorch checkpoint is a zip archive
        why = 'not a checkpoint (.pt)' if os.path.exists(text) else 'no such file'
        raise argparse.ArgumentTypeError(f'{text}: {why}')
    return text


def weights_file(text):
    """'' (none), an official name (downloaded if missing), a checkpoint, or an exported .torchscript or .onnx."""
    if text.endswith(('.torchscript', '.onnx')):
        return existing_file(text)
    return text if not text or os.path.basename(text) in OFFICIAL else checkpoint_file(text)


# ---------------------------------------------------------------------------------------------- the scripts' flags
# The original's flags and defaults. train.py and detect.py call these with what only they know.
# keys of the original's hyp files that are not used here, and why
NOT_USED = dict(iou_t='unused by the original too', anchors='3 anchors per level here, refitted by autoanchor if poor',
                copy_paste='it pastes segments: polygon labels are read as boxes here')


def parse_cfg(cfg, scales, architectures):
    """A model's name (--cfg) as (scale, architecture), of model.py's SCALES and ARCHITECTURES: yolov5s.yaml or s ->
    ('s', 'p5'), yolov5s6.yaml -> ('s', 'p6'), yolov5s-p2.yaml -> ('s', 'p2') for an architecture 'p2'."""
    name = os.path.splitext(os.path.basename(cfg))[0].removeprefix('yolov5')
    arch = name[1:].lstrip('-')
    arch = {'': 'p5', '6': 'p6'}.get(arch, arch)
    if name[:1] not in scales or arch not in architectures:
        raise ValueError(f'{cfg!r} is not a model of model.py (yolov5s.yaml, yolov5s6.yaml, ...)')
    return name[0], arch


def model_cfg(scales, architectures):
    """--cfg's argparse type: 'yolov5s.yaml' -> 's', 'yolov5s6.yaml' -> 's6'."""
    def parse(text):
        try:
            if text:
                parse_cfg(text, scales, architectures)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return os.path.splitext(os.path.basename(text))[0].removeprefix('yolov5')
    return parse


def train_args(argv, hyp, models, world_size=1, doc=''):
    """train.py's options. hyp: the keys --hyp may set; models: model.py's (SCALES, ARCHITECTURES), for --cfg;
    world_size: torchrun's processes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--weights', nargs='+', type=weights_file, default=['yolov5n.pt'],
                   help="starting weights; '' for none (--val-only: several, as an ensemble)")
    p.add_argument('--cfg', type=model_cfg(*models), default='', help='model: yolov5s.yaml, yolov5s6.yaml, s ...')
    p.add_argument('--data', help='data YAML, dataset root, images or .txt (coco128.yaml); --resume: its new place')
    p.add_argument('--single-cls', action='store_true', help='train every class as one')
    p.add_argument('--freeze', nargs='+', type=number(int, 0), default=[0], help='freeze N layers (10: backbone)')
    p.add_argument('--names', type=existing_file, help='class names, one a line')
    p.add_argument('--hyp', nargs='*', type=key_number(hyp, NOT_USED), default=[], metavar='KEY=VALUE or FILE.yaml',
                   help='override HYP entries')
    p.add_argument('--epochs', type=number(int, 1), default=100)
    p.add_argument('--batch', '--batch-size', type=batch_size, default=16,
                   help='total over all processes; -1: as many as fit 80%% of the free GPU memory')
    p.add_argument('--img', '--img-size', '--imgsz', type=number(int, 1), default=640)
    p.add_argument('--rect', action='store_true', help='rectangular training batches (no mosaic)')
    p.add_argument('--resume', nargs='?', type=checkpoint_file, const=True, help='the latest run or a last.pt')
    p.add_argument('--nosave', action='store_true', help='only save the final checkpoint')
    p.add_argument('--noval', action='store_true', help='only validate after the final epoch')
    p.add_argument('--noautoanchor', action='store_true')
    p.add_argument('--cache', nargs='?', const='ram', choices=['ram', 'disk'],
                   help='keep the images in memory, or decoded on disk (an .npy beside each)')
    p.add_argument('--image-weights', action='store_true', help='draw images by the weights of their classes')
    p.add_argument('--quad', action='store_true', help='batches of 4-image quads at twice the size')
    p.add_argument('--save-period', type=int, default=-1, help='save epochN.pt every N epochs (-1: never)')
    p.add_argument('--noplots', action='store_true', help='no pictures')
    p.add_argument('--evolve', type=number(int, 1), nargs='?', const=300, help='evolve HYP for N generations')
    p.add_argument('--evolve_population', type=existing_folder, help='hyp files to start evolving from')
    p.add_argument('--resume_evolve', type=existing_file, help='the evolve.csv of an evolution to go on with')
    p.add_argument('--device', type=device_name, default='', help='cpu, 0, 0,1 ...')
    p.add_argument('--multi-scale', action='store_true', help='vary the image size by +-50%%')
    p.add_argument('--optimizer', default='SGD', choices=['SGD', 'Adam', 'AdamW'])
    p.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under DDP (CUDA)')
    p.add_argument('--workers', type=number(int, 0), help='loader workers per process')
    p.add_argument('--project', help='runs/train, or runs/val')
    p.add_argument('--name', default='exp')
    p.add_argument('--exist-ok', action='store_true')
    p.add_argument('--cos-lr', action='store_true', help='cosine learning-rate decay')
    p.add_argument('--label-smoothing', type=number(float, 0, 1), default=0.0)
    p.add_argument('--patience', type=number(int, 0), default=100, help='epochs without improvement')
    p.add_argument('--seed', type=number(int, 0), default=0)
    p.add_argument('--amp', choices=['auto', *AMP_TYPES], default='auto',
                   help='auto: fp16 on CUDA, bf16 on CPUs with AMX, else off')
    p.add_argument('--no-amp', dest='amp', action='store_const', const='off', help='--amp off: train in fp32')
    p.add_argument('--val-only', action='store_true', help='only validate --weights on --data')
    p.add_argument('--half', action='store_true', help='--val-only in 16 bits where faster, as --amp auto')
    p.add_argument('--verbose', action='store_true', help='per-class rows')
    p.add_argument('--conf-thres', type=number(float, 0, 1), default=0.001)
    p.add_argument('--iou-thres', type=number(float, 0, 1), default=0.6)
    p.add_argument('--max-det', type=number(int, 1), default=300)
    p.add_argument('--task', default='val', choices=['val', 'test', 'speed', 'study'],
                   help='--val-only on this split of --data; speed: timed at conf 0.25; study: at sizes 256-1536')
    p.add_argument('--save-json', action='store_true', help='--val-only: COCO JSON too')
    p.add_argument('--save-txt', action='store_true', help='--val-only: the detections as label files')
    p.add_argument('--save-hybrid', action='store_true', help='--save-txt, with the labels among the detections')
    p.add_argument('--save-conf', action='store_true', help='--save-txt: with confidences')
    p.add_argument('--augment', action='store_true', help='--val-only with test-time augmentation')
    p.add_argument('--trust-code', action='store_true', help='run a .torchscript file (it holds code)')
    opt = p.parse_args(argv)
    if len(opt.weights) > 1 and not opt.val_only:
        p.error('argument --weights: several only with --val-only (an ensemble); training starts from one')
    opt.weights = opt.weights[0] if len(opt.weights) == 1 else opt.weights
    opt.hyp = [pair for pairs in opt.hyp for pair in pairs]
    opt.data_given = opt.data is not None
    opt.data = opt.data or 'coco128.yaml'
    opt.project = opt.project or ('runs/val' if opt.val_only else 'runs/evolve' if opt.evolve else 'runs/train')
    processes = world_size if world_size > 1 else len(opt.device.split(','))  # --device 0,1: one per GPU
    if opt.batch == -1 and processes > 1:
        p.error('argument --batch: -1 (autobatch) on one GPU only, as the original')
    if opt.batch % processes:
        p.error(f'argument --batch: {opt.batch} is not a multiple of the number of processes ({processes})')
    if processes > 1 and (opt.rect or opt.val_only):  # (every process takes every n-th image: mixed rect shapes)
        p.error(f'argument {"--rect" if opt.rect else "--val-only"}: one process only')
    for flag in ('evolve', 'image_weights') if processes > 1 else ():  # as the original
        if getattr(opt, flag):
            p.error(f'argument --{flag.replace("_", "-")}: not with several processes (DDP)')
    if opt.evolve and (opt.resume or opt.val_only):
        p.error('argument --evolve: each generation is a new run (--resume_evolve goes on with an evolution)')
    if (opt.evolve_population or opt.resume_evolve) and not opt.evolve:
        p.error('argument --evolve_population/--resume_evolve: only with --evolve N')
    if opt.image_weights and opt.rect:
        p.error('argument --image-weights: not with --rect (its batches are fixed)')
    return opt


def unknown_class(opt, names):
    """Whether detect's --classes names a class the model does not have (it says so, as argparse would)."""
    if opt.classes and max(opt.classes) >= len(names):
        print(f'detect.py: error: argument --classes: {max(opt.classes)} is not a class of {opt.weights} '
              f'(0 to {len(names) - 1})', file=sys.stderr)
        return True
    return False


def detect_args(argv, doc=''):
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('source', nargs='*', help='images, videos, folders, globs, webcams (0), URLs, .streams lists')
    p.add_argument('--source', dest='more_sources', nargs='+', default=[], help='the same, as a flag')
    p.add_argument('--weights', nargs='+', type=weights_file, default=['yolov5n.pt'],
                   help='yolov5*.pt, ours, or .torchscript/.onnx; several: an ensemble')
    p.add_argument('--img', '--img-size', '--imgsz', nargs='+', type=number(int, 1), default=[640],
                   help='inference size (pixels): one number, or h w')
    p.add_argument('--conf-thres', type=number(float, 0, 1), default=0.25)
    p.add_argument('--iou-thres', type=number(float, 0, 1), default=0.45)
    p.add_argument('--max-det', type=number(int, 1), default=1000)
    p.add_argument('--classes', nargs='+', type=number(int, 0), help='keep only these class indices')
    p.add_argument('--agnostic-nms', action='store_true')
    p.add_argument('--device', type=device_name, default='', help='cpu, 0, cuda:0 ... (default: cuda if available)')
    p.add_argument('--save-txt', action='store_true', help='save YOLO labels to labels/*.txt')
    p.add_argument('--save-conf', action='store_true', help='add confidences to --save-txt labels')
    p.add_argument('--save-csv', action='store_true', help='the detections in predictions.csv')
    p.add_argument('--nosave', action='store_true', help='do not save annotated images or videos')
    p.add_argument('--project', default='runs/detect')
    p.add_argument('--name', default='exp')
    p.add_argument('--exist-ok', action='store_true', help='reuse project/name instead of incrementing')
    p.add_argument('--line-thickness', type=number(int, 1), default=3)
    p.add_argument('--hide-labels', action='store_true')
    p.add_argument('--hide-conf', action='store_true')
    p.add_argument('--half', action='store_true', help='16-bit where faster: fp16 on CUDA, bf16 on CPUs with AMX')
    p.add_argument('--augment', action='store_true', help='test-time augmentation: 3 scales, one flipped')
    p.add_argument('--save-crop', action='store_true', help='save each box, cropped, to crops/CLASS/')
    p.add_argument('--vid-stride', type=number(int, 1), default=1, help='every n-th frame of videos and streams')
    p.add_argument('--view-img', action='store_true', help='show the results (needs an OpenCV with windows)')
    p.add_argument('--trust-code', action='store_true', help='run a .torchscript file (it holds code)')
    opt = p.parse_args(argv)
    opt.source += opt.more_sources
    if not opt.source:
        p.error('the following arguments are required: source (or --source)')
    if opt.view_img:
        print('WARNING: --view-img: opencv-python-headless (requirements.txt) has no windows: see the saved results',
              file=sys.stderr)
    if len(opt.img) > 2:
        p.error(f'argument --img: one or two numbers (h w), not {len(opt.img)}')
    opt.img = [check_img_size(size) for size in opt.img]
    opt.weights = opt.weights[0] if len(opt.weights) == 1 else opt.weights
    return opt


def fit_batch(batch_sizes, memories, free, fraction=0.8, default=16):
    """The batch whose memory, on the line fitted through (batch_sizes, memories), is fraction of free (same units);
    below a size that failed (memory None); default if the fit makes no sense (the original's 1 to 1024)."""
    done = [(b, m) for b, m in zip(batch_sizes, memories) if m is not None]
    if len(done) < 2:
        return default
    slope, intercept = np.polyfit(*zip(*done), deg=1)
    batch = int((free * fraction - intercept) / slope) if slope > 0 else default
    if None in memories and batch >= batch_sizes[memories.index(None)]:  # past a size that ran out of memory
        batch = batch_sizes[max(memories.index(None) - 1, 0)]
    return batch if 1 <= batch <= 1024 else default


def autobatch(model, img_size, device, amp, default=16):
    """--batch -1: the training batch that uses 80% of the GPU's free memory, from the memory a forward and backward
    pass of batches 1 to 16 take, as the original's; on a CPU the default."""
    prefix = 'AutoBatch: '
    print(f'{prefix}Computing optimal batch size for --imgsz {img_size}')
    if device.type != 'cuda':
        print(f'{prefix}CUDA not detected, using default CPU batch-size {default}')
        return default
    model = copy.deepcopy(model).train()
    free = torch.cuda.mem_get_info(device)[0]
    batch_sizes = [1, 2, 4, 8, 16]
    memories = []
    for batch in batch_sizes:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_reserved(device)
        try:
            x = torch.zeros(batch, 3, img_size, img_size, device=device)
            with torch.autocast('cuda', dtype=amp, enabled=amp is not None):
                sum(y.float().sum() for y in model(x)).backward()
            memories.append(torch.cuda.max_memory_reserved(device) - base)
        except torch.OutOfMemoryError:
            memories.append(None)
        model.zero_grad(set_to_none=True)
    del model
    torch.cuda.empty_cache()
    batch = fit_batch(batch_sizes, memories, free)
    print(f'{prefix}Using batch-size {batch} for {device} ({free / 2 ** 30:.2f}G free)')
    return batch
