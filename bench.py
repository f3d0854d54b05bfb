"""
Speed figures on this machine (a benchmark, not a test):  python bench.py [--shared ../shared] [--skip-train]
Prints the fused yolov5n forward latency, the whole `detect.py` process, the data pipeline, training and
validation throughput, next to the original YOLOv5's figures measured on the 2-core CPU machine.
"""
import argparse
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import data
import train
from loss import YOLOLoss
from model import load_model

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
    """Wall time and peak RSS (MiB) of a child process."""
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd='/tmp', capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f'{cmd} failed:\n{r.stderr}')
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.stdout


def pipeline_rate(dataset, batches=8, batch=16):
    n = batches * batch
    t = time.perf_counter()
    for b in range(batches):
        data.collate([dataset[(b * batch + i) % len(dataset)] for i in range(batch)])
    return n / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--shared', default=str(ROOT.parent / 'shared'))
    p.add_argument('--skip-train', action='store_true', help='skip the 3-epoch fine-tune (about 40 s)')
    a = p.parse_args()
    shared = Path(a.shared)
    weights, coco, bus = shared / 'weights/yolov5n.pt', shared / 'datasets/coco128', shared / 'images/bus.jpg'
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads\n')
    print(f'{"what":58s} {"ours":>18s}   original YOLOv5')

    hyp = dict(train.HYP)
    model, _ = load_model(weights, fuse=True)
    x = torch.rand(1, 3, 640, 640)
    with torch.inference_mode():
        plain = median_ms(lambda: model(x))
        model = model.to(memory_format=torch.channels_last)
        cl = median_ms(lambda: model(x))
    print(f'{"fused yolov5n forward, batch 1, 640x640 (fp32)":58s} {plain:15.1f} ms   ~110-128 ms')
    print(f'{"  the same in channels_last (as detect.py runs it)":58s} {cl:15.1f} ms')

    wall, rss, _ = child_run([sys.executable, str(ROOT / 'detect.py'), str(bus), '--weights', str(weights), '--nosave'])
    wall_torch, _, out = child_run([sys.executable, '-c', 'import torch, resource; '
                                    'print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)'])
    print(f'{"detect.py on one image, whole process: wall":58s} {wall:16.2f} s   ~7.7 s')
    print(f'{"  peak memory (max RSS)":58s} {rss:14.0f} MiB   ~940 MiB')
    print(f'{"  `python -c import torch` alone, for scale: wall, peak":58s} {wall_torch:6.2f} s {float(out):5.0f} MiB')

    wall, _, out = child_run([sys.executable, str(ROOT / 'train.py'), '--val-only', '--weights', str(weights),
                              '--data', str(coco), '--img', '640', '--batch', '32'])
    inf = float(re.search(r'([\d.]+)ms inference', out).group(1))
    print(f'{"validation of yolov5n on coco128 at 640, batch 32: wall":58s} {wall:16.1f} s   ~18 s')
    print(f'{"  inference per image":58s} {inf:15.1f} ms   ~120 ms')

    if not a.skip_train:
        wall, _, out = child_run([sys.executable, str(ROOT / 'train.py'), '--weights', str(weights), '--data', str(coco),
                                  '--img', '320', '--batch', '16', '--epochs', '3', '--project', '/tmp/bench_runs'])
        final = [line.split() for line in out.splitlines() if line.split()[:1] == ['all']][-1]
        print(f'{"fine-tune yolov5n on coco128, img 320, batch 16, 3 epochs":58s} {wall:16.1f} s   ~80 s')
        print(f'{"  final mAP50, mAP50-95":58s} {final[5]:>9s}, {final[6]:>6s}   0.42, 0.24')

    # in-process measurements last: their threads and workers would slow the child processes above
    disk = data.YOLODataset(coco, 640, 16, augment=True, hyp=hyp, prefix='  ')
    ram = data.YOLODataset(coco, 640, 16, augment=True, hyp=hyp, cache='ram', prefix='  ')
    print(f'{"training pipeline, mosaic + all augmentations, 640, 1 process":58s} {pipeline_rate(disk):12.1f} img/s   ~44 img/s')
    print(f'{"  with --cache ram":58s} {pipeline_rate(ram):12.1f} img/s   ~100 img/s')

    # training step at img 320, batch 16: loader with workers, forward, loss, backward, optimizer step
    net, _ = load_model(weights)
    net.train()
    ds = data.YOLODataset(coco, 320, 16, augment=True, hyp=hyp, prefix='  ')
    loader = data.create_dataloader(ds, 16, workers=2, shuffle=True)
    loss_fn = YOLOLoss(net, dict(hyp, obj=hyp['obj'] * (320 / 640) ** 2))
    opt = train.make_optimizer(net, 'SGD', 0.01, 0.937, 5e-4)
    n, t = 0, None
    for epoch in range(2):
        data.set_epoch(loader, epoch)
        for i, (imgs, targets, _, _) in enumerate(loader):
            if epoch == 0 and i == 2:  # after warm-up
                n, t = 0, time.perf_counter()
            loss, _ = loss_fn(net(imgs.float() / 255), targets)
            loss.backward()
            opt.step()
            opt.zero_grad()
            n += len(imgs)
    print(f'{"training, img 320, batch 16 (data, forward, backward, step)":58s} {n / (time.perf_counter() - t):12.1f} img/s   ~11-14 img/s')



if __name__ == '__main__':
    main()
