"""
Speed figures on this machine (a benchmark, not a test):  python bench.py [--shared ../shared] [--skip-train]
Prints our side of each figure that README's table compares with the original YOLOv5. A speed claim is a ratio
against the original measured in the same sitting: see README for how (../shared/tools/ab).

The GPU check, on a CUDA machine:  python bench.py --gpu [--orig DIR]   (at most 10 minutes, no network)
Runs the CUDA paths for real and prints PASS/FAIL with the figures: detect.py --half, a 3-epoch COCO128 fine-tune
at 640 in fp16 with loss scaling (its mAP50-95 within 0.03 of the same run on the CPU in fp32, run alongside),
torchrun over NCCL, one command given two GPUs (when there are two), the out-of-memory message, and training
images/s of yolov5n at 640, batch 64, ours and the original's (DIR: the folder ../shared/tools/setup-original made).
--dry-run: the same steps on the CPU at toy sizes, to check the check itself on a machine without a GPU.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import data
from model import load_model
from support.cli import half_dtype
from support.datasets import COCO_NAMES

ROOT = Path(__file__).resolve().parent


def median_ms(fn, n=40, warmup=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def child_run(cmd):
    """Wall time, peak RSS (MiB, as /usr/bin/time measures it) and stdout of a child process."""
    with tempfile.NamedTemporaryFile('r') as peak:
        t = time.perf_counter()
        r = subprocess.run(['/usr/bin/time', '-f', '%M', '-o', peak.name, *cmd], cwd='/tmp', capture_output=True,
                           text=True)
        wall = time.perf_counter() - t
        if r.returncode:
            raise SystemExit(f'{cmd} failed:\n{r.stderr}')
        return wall, int(peak.read().split()[-1]) / 1024, r.stdout


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--shared', default=str(ROOT.parent / 'shared'))
    p.add_argument('--skip-train', action='store_true', help='skip the 3-epoch fine-tune (about 25 s)')
    p.add_argument('--gpu', action='store_true', help='the GPU check (see above) instead of the CPU figures')
    p.add_argument('--dry-run', action='store_true', help='--gpu on the CPU at toy sizes')
    p.add_argument('--orig', default='/work/scratch/orig', help='the original YOLOv5 for --gpu: setup-original\'s DIR')
    a = p.parse_args()
    shared = Path(a.shared)
    if a.gpu:
        sys.exit(gpu_check(shared, Path(a.orig), a.dry_run))
    weights, coco, bus = shared / 'weights/yolov5n.pt', shared / 'datasets/coco128', shared / 'images/bus.jpg'
    half = half_dtype(torch.device('cpu'))
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, 16-bit type on this CPU: {half}\n')
    row = lambda what, value: print(f'{what:80s} {value}')

    model = load_model(weights, fuse=True)
    x = torch.rand(1, 3, 640, 640)
    with torch.inference_mode():
        row('fused yolov5n forward, batch 1, 640x640, fp32', f'{median_ms(lambda: model(x)):.1f} ms')
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        row('  the same in channels_last (as detect.py runs it)', f'{median_ms(lambda: model(x)):.1f} ms')
        if half:
            with torch.autocast('cpu', dtype=half):
                row(f'  the same in {half} (detect.py --half)', f'{median_ms(lambda: model(x)):.1f} ms')

    for extra in ([], ['--half']):
        wall, rss, _ = child_run([sys.executable, str(ROOT / 'detect.py'), str(bus), '--weights', str(weights),
                                  '--nosave', *extra])
        row(f'detect.py {" ".join(extra)} on one image, whole process: wall, peak', f'{wall:.2f} s, {rss:.0f} MiB')
        wall, rss, out = child_run([sys.executable, str(ROOT / 'train.py'), '--val-only', '--weights', str(weights),
                                    '--data', str(coco), '--img', '640', '--batch', '32', '--project', '/tmp/bench_val',
                                    *extra])
        final = next(line.split() for line in out.splitlines() if line.split()[:1] == ['all'])
        row(f'--val-only {" ".join(extra)} on coco128 at 640, batch 32: wall, peak, mAP50-95',
            f'{wall:.1f} s, {rss:.0f} MiB, {final[6]}')

    if not a.skip_train:
        wall, rss, out = child_run([sys.executable, str(ROOT / 'train.py'), '--weights', str(weights), '--data',
                                    str(coco), '--img', '320', '--batch', '16', '--epochs', '3', '--project',
                                    '/tmp/bench_runs'])
        final = [line.split() for line in out.splitlines() if line.split()[:1] == ['all']][-1]
        speeds = re.findall(r'([\d.]+)it/s', out)
        row('fine-tune yolov5n on coco128, img 320, batch 16, 3 epochs: wall, peak', f'{wall:.1f} s, {rss:.0f} MiB')
        row('  final mAP50, mAP50-95; training speed of epochs 1 and 2', f'{final[5]}, {final[6]}; '
            f'{" and ".join(speeds[1:])} it/s')

    # in-process measurements last: their threads would slow the child processes above
    ds = data.YOLODataset(coco, 640, 16, augment=True, hyp=data.AUG, prefix='  ')
    imread, decodes = data.cv2.imread, []

    def timed_imread(*args):  # the JPEG decoding inside the samples: time and count
        t = time.perf_counter()
        img = imread(*args)
        decodes.append(time.perf_counter() - t)
        return img
    data.cv2.imread = timed_imread
    for keep in (False, True):  # every image decoded each time; or kept once decoded, as a run does when they fit
        ds.keep_decoded = keep
        for i in range(32):
            ds[(0, i)]
        decodes.clear()
        t = time.perf_counter()
        for i in range(256):
            ds[(1 + i // 128, i % 128)]
        t = time.perf_counter() - t
        row(f'augmented samples (mosaic + all augmentations), 640, one process, {"kept" if keep else "decoded"}',
            f'{256 / t:.1f} img/s')
        if not keep:
            row(f'  a sample: {len(decodes) / 256:.2f} JPEGs decoded (of 4), in a time that is',
                f'{t / sum(decodes):.2f}x their decoding')
    data.cv2.imread = imread
    loader = data.create_dataloader(ds, 16, 0, shuffle=True)
    # every image decoded (create_dataloader would keep COCO128's: they fit)
    ds.keep_decoded, ds.decoded = False, [None] * len(ds)
    n, t = 0, time.perf_counter()
    for epoch in (1, 2):
        data.set_epoch(loader, epoch)
        n += sum(len(imgs) for imgs, *_ in loader)
    t = time.perf_counter() - t
    row('the loader, every image decoded (batches of 16, no workers), 640', f'{n / t:.1f} img/s')


# ---------------------------------------------------------------------------------------------- python bench.py --gpu
GPU_CHECK_SECONDS = 600


def final_row(out):
    """The last 'all' row of a validation table: P, R, mAP50, mAP50-95."""
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ['all']]
    return [float(v) for v in rows[-1][3:7]] if rows else None


def symlinked_dataset(root, coco, copies, first=128):
    """root/images/train and root/labels/train: the first COCO128 images and their labels, each `copies` times under
    distinct names (the original keys its label cache by file name); root.yaml names them, with 16 to validate (the
    original validates every epoch: its --noval fails in 7.0.14)."""
    for kind in ('images', 'labels'):
        (root / kind / 'train').mkdir(parents=True, exist_ok=True)
    for k in range(copies):
        for img in sorted((coco / 'images/train2017').glob('*.jpg'))[:first]:
            (root / 'images/train' / f'{k}_{img.name}').symlink_to(img)
            label = coco / 'labels/train2017' / f'{img.stem}.txt'
            if label.exists():
                (root / 'labels/train' / f'{k}_{img.stem}.txt').symlink_to(label)
    (root / 'val.txt').write_text(''.join(f'{f}\n' for f in sorted((root / 'images/train').iterdir())[:16]))
    yaml = root.with_suffix('.yaml')
    yaml.write_text(f'path: {root}\ntrain: images/train\nval: val.txt\nnames:\n' +
                    ''.join(f'  {i}: {n}\n' for i, n in enumerate(COCO_NAMES)))
    return yaml


def epoch_rates(out):
    """it/s of each training epoch: from our epoch lines ('  16/16 1.55it/s ETA 0s'), or from the original's tqdm
    bars (its smoothed rate when an epoch's bar is full: '  1/2   22.3G ...  640: 100%|...| 16/16 [00:10<00:00,
    1.55it/s]')."""
    ours = [float(rate) for _, rate in re.findall(r' (\d+)/\1 ([\d.]+)it/s ETA', out)]
    if ours:
        return ours
    last = {}  # epoch: its bar's rate, the last time it was drawn
    for line in re.split(r'[\r\n]', out):
        m = re.match(r'\s*(\d+)/\d+\s+[\d.]+G\s.*\| (\d+)/\2 \[[^\]]*?([\d.]+)(it/s|s/it)\]', line)
        if m:
            last[int(m[1])] = float(m[3]) if m[4] == 'it/s' else 1 / float(m[3])
    return [last[e] for e in sorted(last)]


def gpu_check(shared, orig, dry):
    """The steps of `python bench.py --gpu`, each bounded so that all end within GPU_CHECK_SECONDS; returns the exit
    code: 0 when every step passed."""
    if not dry and not torch.cuda.is_available():
        return 'bench.py --gpu: no CUDA device here (--dry-run runs the same steps on the CPU, at toy sizes)'
    deadline = time.monotonic() + GPU_CHECK_SECONDS
    weights, coco, bus = shared / 'weights/yolov5n.pt', shared / 'datasets/coco128', shared / 'images/bus.jpg'
    tmp = Path(tempfile.mkdtemp(prefix='gpu_check_'))
    (tmp / 'yolov5n.pt').symlink_to(weights)  # the original's AMP check looks for it here, else downloads it
    dev = 'cpu' if dry else '0'
    img, batch, epochs, copies, big_batch = (64, 8, 1, 1, 8) if dry else (640, 16, 3, 16, 64)
    if dry:  # 16 images
        coco = symlinked_dataset(tmp / 'small', coco, 1, 16).with_suffix('')
    failed = []
    print(f'torch {torch.__version__}, {torch.cuda.get_device_name(0) if not dry else "dry run on the CPU"}; '
          f'working in {tmp}', flush=True)

    def report(name, ok, figures):
        print(f'{"PASS" if ok else "FAIL"}  {name:58s} {figures}', flush=True)
        if not ok:
            failed.append(name)

    def run(cmd, limit, env=None):
        """cmd's CompletedProcess, or None if it did not end within limit or the time left."""
        left = deadline - time.monotonic() - 10
        if left < 20:
            return None
        try:
            return subprocess.run([str(c) for c in cmd], cwd=tmp, capture_output=True, text=True,
                                  timeout=min(limit, left), env=env)
        except subprocess.TimeoutExpired:
            return None

    def said(r):  # the end of what a failed step printed
        return 'timed out' if r is None else f'exit {r.returncode}: {(r.stderr or r.stdout)[-600:]}'

    def passed(r):
        return r is not None and r.returncode == 0

    train = [sys.executable, ROOT / 'train.py']
    fine_tune = ['--weights', weights, '--data', coco, '--img', img, '--batch', batch, '--epochs', epochs]
    # the CPU fp32 reference runs alongside the steps that time nothing; it has the CPU to itself before the speed runs
    log = open(tmp / 'cpu_fp32.log', 'w+')
    cpu = subprocess.Popen([str(c) for c in [*train, *fine_tune, '--device', 'cpu', '--amp', 'off', '--project',
                            tmp / 'cpu']], cwd=tmp, stdout=log, stderr=subprocess.STDOUT, text=True)

    r = run([sys.executable, ROOT / 'detect.py', bus, '--weights', weights, '--half', '--save-txt', '--save-conf',
             '--device', dev, '--project', tmp / 'detect'], 120)
    if passed(r) and (tmp / 'detect/exp/labels/bus.txt').exists():
        ours = np.loadtxt(tmp / 'detect/exp/labels/bus.txt', ndmin=2)
        ref = np.loadtxt(shared / 'expected/bus_yolov5n_640.txt', ndmin=2)
        worst = max((np.abs(ours[ours[:, 0] == row[0], 1:] - row[1:]).max(1).min(initial=1.0) for row in ref),
                    default=1.0) if len(ours) == len(ref) else 1.0
        speed = re.search(r'([\d.]+)ms inference', r.stdout).group(1)
        report('detect.py --half on bus.jpg: the original\'s boxes to 0.01', worst < 0.01,
               f'{len(ours)} boxes, worst difference {worst:.4f}, {speed} ms inference')
    else:
        report('detect.py --half on bus.jpg', False, said(r))

    extra = ['--amp', 'fp16'] if dry else []  # on a GPU --amp auto is fp16
    r = run([*train, *fine_tune, '--device', dev, '--project', tmp / 'gpu', *extra], 240)
    gpu_map = final_row(r.stdout)[3] if passed(r) else None
    amp = re.search(r'AMP: .*', r.stdout).group(0) if gpu_map is not None else ''
    report(f'fine-tune COCO128 at {img}, {epochs} epochs, fp16 with GradScaler', 'float16 with loss scaling' in amp,
           f'mAP50-95 {gpu_map:.3f}; {amp}; {epoch_rates(r.stdout)} it/s' if gpu_map is not None else said(r))

    r = run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '1', *train[1:],
             *fine_tune[:4], '--img', 320, '--epochs', 1, '--device', dev, '--sync-bn', '--project', tmp / 'torchrun'],
            180)
    report(f'torchrun --nproc_per_node 1 ({"gloo" if dry else "NCCL, SyncBatchNorm"})', passed(r) and '1 process(es)'
           in r.stdout and (dry or 'Using SyncBatchNorm' in r.stdout), 'trained 1 epoch' if passed(r) else said(r))

    r = run([*train, *fine_tune[:4], '--img', 320, '--epochs', 1, '--batch', -1, '--device', dev, '--project',
             tmp / 'autobatch'], 150)
    chosen = re.search(r'AutoBatch: Using batch-size (\d+)', r.stdout) if passed(r) else None
    report('--batch -1: autobatch fits the GPU\'s free memory' if not dry else '--batch -1 on a CPU: 16, as the '
           'original', passed(r) and (chosen is not None and 1 <= int(chosen[1]) <= 1024 if not dry else
                                     'using default CPU batch-size 16' in r.stdout),
           (chosen[0] if chosen else 'trained 1 epoch') if passed(r) else said(r))

    if not dry and torch.cuda.device_count() >= 2:
        r = run([*train, *fine_tune[:4], '--img', 320, '--epochs', 1, '--device', '0,1', '--project', tmp / 'two'], 180)
        report('one command given --device 0,1: DDP on both', passed(r) and '2 GPUs, one process each' in r.stdout
               and '2 process(es)' in r.stdout, 'trained 1 epoch' if passed(r) else said(r))

    if dry:
        print('SKIP  the out-of-memory message: a CPU runs out of memory in other ways')
    else:  # yolov5x at 1280, batch 128: some 500 GB of activations
        r = run([*train, '--weights', '', '--cfg', 'x', '--data', coco, '--img', 1280, '--batch', 128, '--epochs', 1,
                 '--noautoanchor', '--device', dev, '--project', tmp / 'oom'], 180)
        report('out of GPU memory: one message, no traceback', r is not None and r.returncode != 0 and
               'out of GPU memory' in r.stderr and 'Traceback' not in r.stderr, said(r)[-300:])

    try:
        cpu.wait(timeout=max(deadline - time.monotonic() - 200, 1))
        log.seek(0)
        cpu_map = final_row(log.read())[3] if cpu.returncode == 0 else None
    except subprocess.TimeoutExpired:
        cpu.kill()
        cpu_map = None
    report('the fp16 fine-tune\'s mAP50-95 within 0.03 of fp32 on the CPU', None not in (gpu_map, cpu_map) and
           abs(gpu_map - cpu_map) <= 0.03, f'{gpu_map} against {cpu_map}' + (' (CPU run unfinished or failed: '
           f'{tmp / "cpu_fp32.log"})' if cpu_map is None else ''))

    yaml = symlinked_dataset(tmp / 'big', shared / 'datasets/coco128', copies, 32 if dry else 128)
    speed = ['--data', yaml, '--weights', weights, '--img', img, '--batch', big_batch, '--epochs', 2, '--device', dev]
    r = run([*train, *speed, '--project', tmp / 'speed_ours'], 150)
    ours = epoch_rates(r.stdout)[-1] * big_batch if passed(r) else None
    report(f'training speed of yolov5n at {img}, batch {big_batch} (ours)', ours is not None,
           f'{ours:.0f} images/s in epoch 2' if ours else said(r))
    cli = orig / 'venv/bin/yolov5'
    if not cli.exists():
        print(f'SKIP  the original\'s training speed: no {cli} (../shared/tools/setup-original DIR, then --orig DIR)')
    else:
        env = dict(os.environ, PATH=f'{cli.parent}:{os.environ["PATH"]}', YOLOV5_CONFIG_DIR=str(orig / 'cfg'),
                   TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
        r = run([cli, 'train', *speed, '--project', tmp / 'speed_orig'], 200, env)
        rates = epoch_rates(r.stdout + r.stderr) if passed(r) else []
        theirs = rates[-1] * big_batch if rates else None
        report('the same with the original', theirs is not None, f'{theirs:.0f} images/s in epoch 2 (tqdm\'s '
               f'smoothed rate); ours / original: {ours / theirs:.2f}' if theirs and ours else said(r))
    print(f'{len(failed)} step(s) failed: {", ".join(failed)}' if failed else 'all steps passed',
          f'({GPU_CHECK_SECONDS - deadline + time.monotonic():.0f} s)')
    return 1 if failed else 0


if __name__ == '__main__':
    main()
