"""
Speed figures on this machine (a benchmark, not a test):  python bench.py [--shared ../shared] [--skip-train]
Prints our side of each figure that README's table compares with the original YOLOv5. A speed claim is a ratio
against the original measured in the same sitting: see README for how (../shared/tools/ab).
"""
import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import data
from model import half_dtype, load_model

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
    a = p.parse_args()
    shared = Path(a.shared)
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
        ds.keep = keep
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
    ds.keep, ds.ram = False, [None] * len(ds)  # every image decoded (create_dataloader would keep COCO128's: they fit)
    n, t = 0, time.perf_counter()
    for epoch in (1, 2):
        data.set_epoch(loader, epoch)
        n += sum(len(imgs) for imgs, *_ in loader)
    t = time.perf_counter() - t
    row('the loader, every image decoded (batches of 16, no workers), 640', f'{n / t:.1f} img/s')


if __name__ == '__main__':
    main()
