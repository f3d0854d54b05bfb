"""
Train or validate YOLOv5, an entry point beside detect.py:
  python train.py --data coco128.yaml --weights yolov5n.pt --img 640 --epochs 100
  torchrun --nproc_per_node 2 train.py --data ... --device 0,1   (DDP: NCCL on GPUs, gloo on CPU)
  python train.py --val-only --weights yolov5n.pt --data coco128.yaml
The hyperparameters, the training loop, autoanchor, and validation with YOLOv5's metrics.
"""
import math
import os
import sys
import time
from copy import deepcopy
from datetime import datetime

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from data import AUG, YOLODataset, create_dataloader, set_epoch
from export import load_any
from loss import YOLOLoss, shape_ratio
from model import ARCHITECTURES, SCALES, YOLOv5, from_config, non_max_suppression, predict
from model import scale_boxes
from support.checkpoints import checked_config, config_of, read_checkpoint, save_checkpoint
from support.checkpoints import strip_checkpoint, to_cpu, transfer
from support.cli import Stopwatch, autobatch, check_img_size, half_dtype, memory_used, or_exit
from support.cli import make_repeatable, mixed_precision, out_of_memory, parse_cfg
from support.cli import select_device, train_args
from support.console import print_count, print_progress, start_line
from support.data_yaml import data_spec, is_coco, train_names, val_names
from support.datasets import image_weights, read_names, require_labels, xywh2xyxy
from support.evolve import evolve
from support.loggers import TensorBoard
from support.plots import plot_batch, plot_labels, plot_pr_f1, plot_results, save_confusion_matrix
from support.results import ValOutputs, trim_results, write_results
from support.runs import FiniteSteps, from_rank0, pick_run, removed_if_unstarted, run_dir
from support.runs import ddp_wrapped, local_rank0_first, require_finite, run_under_torchrun
from support.runs import start_process, stop_run
from support.val_benchmarks import run_benchmark

# hyp.scratch-low.yaml (the augmentations: data.py's); --hyp lr0=0.02 or --hyp hyp.VOC.yaml
HYP = dict(lr0=0.01, lrf=0.01, momentum=0.937, weight_decay=0.0005,  # SGD; final lr: lr0 * lrf
           warmup_epochs=3.0, warmup_momentum=0.8, warmup_bias_lr=0.1,
           nbs=64,  # the nominal batch: gradients accumulate to it
           box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0,  # loss gains, BCE weights
           anchor_t=4.0,  # the label-anchor shape limit
           fl_gamma=0.0, label_smoothing=0.0, **AUG)  # focal loss gamma (0: BCE)
RANK = int(os.getenv('RANK', -1))  # set by torchrun: this process among all; -1 without it
LOCAL_RANK = int(os.getenv('LOCAL_RANK', -1))  # this process on its machine
WORLD_SIZE = int(os.getenv('WORLD_SIZE', 1))
MAIN = RANK in (-1, 0)  # only this process validates, prints and saves


def log(*args, **kwargs):
    if MAIN:
        print(*args, **kwargs, flush=True)


def fitness(results):
    """For best.pt."""
    return 0.1 * results.get('metrics/mAP_0.5', 0) + 0.9 * results.get('metrics/mAP_0.5:0.95', 0)


# ---------------------------------------- training
class Trainer:
    """One training run: __init__ sets it up (or restores it); fit() runs the epochs."""

    def __init__(self, opt):
        # DDP first: the steps below wait on each other
        self.ddp = LOCAL_RANK != -1
        self.device = start_process(opt.device, self.ddp)
        # rank 0 picks the run: a new folder, or the checkpoint to resume with its options
        run = pick_run(opt, parse_args) if MAIN else None
        opt, resumed, self.save_dir = from_rank0(run, self.ddp)
        with removed_if_unstarted(self.save_dir, MAIN and not resumed):  # a failed start: no folder
            self.setup(opt, resumed)

    def setup(self, opt, resumed):
        # Each step needs the ones before it.
        self.opt = opt
        self.weights_dir = self.save_dir / 'weights'
        self.start_epoch = resumed['epoch'] + 1 if resumed else 0
        if MAIN:  # rows of epochs that run again (a crash came after a row)
            trim_results(self.save_dir / 'results.csv', self.start_epoch)
        make_repeatable(opt.seed + max(RANK, 0))
        self.hyp = dict(HYP, **dict(opt.hyp))  # the last of a key wins: KEY=VALUE after a file
        self.hyp['label_smoothing'] = opt.label_smoothing or self.hyp['label_smoothing']
        model = self.setup_model_and_data(resumed)  # its classes: the data's
        if MAIN and not resumed:  # before the EMA copy and DDP's broadcast of rank 0's anchors
            labels = np.concatenate(self.train_set.labels)
            if not opt.noplots:
                plot_labels(labels, self.names, self.save_dir / 'labels.jpg')
            if not opt.noautoanchor:
                check_anchors(self.train_set, model, self.hyp['anchor_t'], opt.img, opt.seed)
        self.setup_optimizer(model, resumed)  # the EMA copies the anchors chosen
        self.model = model
        # what trains: under DDP its wrapper, which syncs the gradients (--sync-bn: BatchNorms too)
        self.ddp_model = ddp_wrapped(model, self.device, opt.sync_bn) if self.ddp else model
        self.loss_fn = YOLOLoss(model, self.hyp, opt.img)
        self.held_back = None  # --nosave: the last epoch, saved if the run stops early
        # a non-finite loss skips the step on every process; 3 in a row stop the run
        self.finite = FiniteSteps(self.ddp)
        self.results = {}  # the latest validation's
        self.maps = np.zeros(len(self.names))  # its mAP50-95 per class, for --image-weights
        self.tensorboard = TensorBoard(self.save_dir) if MAIN else None

    def setup_model_and_data(self, resumed):
        """The model (--freeze applied), the datasets and loaders; returns the model."""
        opt = self.opt
        data = local_rank0_first(or_exit, data_spec, opt.data)  # one download a machine
        # channels-last, as the loader's images: 16-bit steps ~25% faster
        model = build_model(opt, resumed, data['names'])
        model = model.to(self.device, memory_format=torch.channels_last)
        frozen = opt.freeze if len(opt.freeze) > 1 else range(opt.freeze[0])  # 10: the backbone
        frozen = tuple(f'model.{i}.' for i in frozen)
        for name, param in model.named_parameters():
            param.requires_grad_(not name.startswith(frozen))
        if not any(param.requires_grad for param in model.parameters()):
            raise SystemExit(f'ERROR: --freeze {opt.freeze}: no layer is left to train')
        self.names = model.names
        self.coco = is_coco(data)
        stride = model.max_stride
        opt.img = check_img_size(opt.img, 2 * stride, stride)  # at least 2 strides, as the original
        if opt.batch == -1:  # the batch that fits the GPU
            opt.batch = autobatch(model, opt.img, self.device, half_dtype(self.device))
        batch = opt.batch // WORLD_SIZE
        cpu = self.device.type == 'cpu'
        self.train_set = train_dataset(opt, data, self.names, self.hyp, stride)
        self.train_loader = create_dataloader(self.train_set, batch, opt.workers, not opt.rect,
                                              max(RANK, 0), WORLD_SIZE, cpu, opt.quad)
        self.val_loader = None
        if MAIN:  # only rank 0 validates; without gradients twice the batch fits
            val_set = val_dataset(opt, data, self.names, stride, 2 * batch)
            self.val_loader = create_dataloader(val_set, val_set.batch_size, opt.workers, cpu=cpu)
        self.nb = len(self.train_loader)  # batches per epoch
        return model

    def setup_optimizer(self, model, resumed):
        """Optimizer, EMA, mixed precision, and their state when resuming."""
        opt, hyp = self.opt, self.hyp
        # at least 100 iterations: tiny datasets warm up too
        self.warmup_iters = max(round(hyp['warmup_epochs'] * self.nb), 100)
        # per nominal batch, as accumulated after warmup
        decay = hyp['weight_decay'] * opt.batch * self.accumulation(self.warmup_iters) / hyp['nbs']
        self.optimizer = make_optimizer(model, opt.optimizer, hyp['lr0'], hyp['momentum'], decay)
        self.ema = deepcopy(model).eval().requires_grad_(False) if MAIN else None  # rank 0's
        # rank 0 checks 16-bit outputs
        image = self.train_set.files[0]
        amp = mixed_precision(self.device, opt.amp, self.ema, image, opt.img) if MAIN else None
        self.amp = from_rank0(amp, self.ddp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.best_fitness = 0.0
        self.best_epoch = 0
        self.updates = 0  # optimizer steps, for the EMA's decay
        self.last_opt_step = -1  # the iteration of the last optimizer step
        if resumed:
            if MAIN:
                self.ema.load_state_dict(resumed['ema'])
            self.optimizer.load_state_dict(resumed['optimizer'])
            if self.scaler.is_enabled() and resumed.get('scaler'):
                self.scaler.load_state_dict(resumed['scaler'])
            for key in ('best_fitness', 'best_epoch', 'updates', 'last_opt_step'):
                setattr(self, key, resumed[key])

    def warmup(self, iteration, start, end):
        """Linear from start (iteration 0) to end (warmup's end)."""
        return float(np.interp(min(iteration, self.warmup_iters), [0, self.warmup_iters],
                               [start, end]))

    def schedule(self, iteration):
        """Sets an iteration's learning rates and momentum. Warmup ramps them (bias lr down from
        warmup_bias_lr, others up from 0), then the lr decays once an epoch."""
        hyp, opt = self.hyp, self.opt
        epoch = iteration // self.nb
        # Once warmup no longer covers an epoch's start (3 warmup epochs: from epoch 4 on), epoch
        # e trains at e - 1's factor: the original stepped its LambdaLR at epoch ends.
        warmup_covers_epoch_start = self.warmup_iters >= epoch * self.nb
        decay_epoch = epoch if warmup_covers_epoch_start else epoch - 1
        if opt.cos_lr:
            cosine = (1 - math.cos(decay_epoch / opt.epochs * math.pi)) / 2
            lr_factor = cosine * (hyp['lrf'] - 1) + 1
        else:
            lr_factor = (1 - decay_epoch / opt.epochs) * (1.0 - hyp['lrf']) + hyp['lrf']
        for number, group in enumerate(self.optimizer.param_groups):  # 0: the biases
            start = hyp['warmup_bias_lr'] if number == 0 else 0.0
            group['lr'] = self.warmup(iteration, start, hyp['lr0'] * lr_factor)
            if 'momentum' in group:  # SGD (Adam keeps its betas)
                group['momentum'] = self.warmup(iteration, hyp['warmup_momentum'], hyp['momentum'])

    def accumulation(self, iteration):
        """Batches whose gradients add up before a step: towards the nominal batch nbs."""
        return max(1, round(self.warmup(iteration, 1, self.hyp['nbs'] / self.opt.batch)))

    def train_epoch(self, epoch):
        """One pass over the training set; returns each loss term's mean, by name."""
        opt, device = self.opt, self.device
        self.ddp_model.train()
        set_epoch(self.train_loader, epoch)
        if opt.image_weights:  # images of rare or poorly found classes drawn more often
            weights = image_weights(self.train_set.labels, len(self.names), self.maps)
            self.train_loader.sampler.weights = weights
        self.optimizer.zero_grad()
        mean_losses = {}
        steps = 0  # taken: a skipped (non-finite) one is not in the means
        start = time.time()
        for i, (imgs, targets, paths, _) in enumerate(self.train_loader):
            iteration = i + self.nb * epoch  # since the start of training
            self.schedule(iteration)
            accumulate = self.accumulation(iteration)
            imgs = imgs.to(device, non_blocking=True).float() / 255
            if opt.multi_scale:
                imgs = self.rescale(imgs, iteration)
            with torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None):
                preds = self.ddp_model(imgs)
            loss, terms = self.loss_fn(preds, targets.to(device))  # fp32, as Detect's maps
            if opt.quad:
                loss = loss * 4  # the original's: a sample holds 4 images
            if not self.finite(loss, paths):
                continue
            # DDP averages the gradients, and YOLOv5's loss is per global batch
            self.scaler.scale(loss * WORLD_SIZE).backward()
            if iteration - self.last_opt_step >= accumulate:
                self.optimizer_step()
                self.last_opt_step = iteration
            steps += 1
            mean_losses = {name: (mean_losses.get(name, 0) * (steps - 1) + term) / steps
                           for name, term in terms.items()}
            if MAIN:  # the training line, a value a name
                line = {'Epoch': f'{epoch}/{opt.epochs - 1}', 'GPU_mem': memory_used(device),
                        **mean_losses, 'Instances': len(targets), 'Size': imgs.shape[-1]}
                print_progress(line, i, self.nb, start, header=steps == 1)
            if MAIN and epoch == 0 and i == 0 and not opt.noplots:
                picture = self.save_dir / 'train_batch0.jpg'
                plot_batch((imgs * 255).byte().cpu(), targets, self.names, picture)
        return mean_losses

    def rescale(self, imgs, iteration):
        """--multi-scale: the batch resized to a random stride multiple in 0.5-1.5 --img."""
        rng = np.random.default_rng([self.opt.seed, iteration])  # a resumed run draws the same
        stride = self.model.max_stride
        size = int(rng.integers(self.opt.img * 0.5, self.opt.img * 1.5 + stride)) // stride * stride
        factor = size / max(imgs.shape[2:])
        if factor == 1:
            return imgs
        new_shape = [math.ceil(x * factor / stride) * stride for x in imgs.shape[2:]]
        return nn.functional.interpolate(imgs, size=new_shape, mode='bilinear', align_corners=False)

    def optimizer_step(self):
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(self.ddp_model.parameters(), max_norm=10.0)
        self.scaler.step(self.optimizer)  # fp16: skipped if the gradients are not finite
        self.scaler.update()
        self.optimizer.zero_grad()
        self.updates += 1
        if MAIN:
            ema_update(self.ema, self.model, self.updates)

    def end_epoch(self, epoch, mean_losses):
        """Validation, results.csv, checkpoints; returns whether to stop early. A possibly final
        epoch is validated and saved, --noval or --nosave too."""
        opt = self.opt
        patience = opt.patience or float('inf')
        final = epoch + 1 == opt.epochs or epoch - self.best_epoch >= patience
        if not opt.noval or final:  # else the last results are carried forward
            self.results = validate(self.ema, self.val_loader, self.names, loss_fn=self.loss_fn,
                                    dtype=self.amp)
            self.maps = self.results.pop('maps', self.maps)  # per class
        if fitness(self.results) >= self.best_fitness:
            self.best_fitness = fitness(self.results)
            self.best_epoch = epoch
        stop = epoch - self.best_epoch >= patience
        require_finite(self.model, self.ema)  # last.pt stays good
        groups = self.optimizer.param_groups
        rates = {f'x/lr{number}': group['lr'] for number, group in enumerate(groups)}
        losses = {f'train/{name}': float(value) for name, value in mean_losses.items()}
        row = {'epoch': epoch, **losses, **self.results, **rates}  # results.csv's, by name
        write_results(self.save_dir / 'results.csv', row)
        self.tensorboard.add_row(row)
        if not opt.noplots:
            plot_results(self.save_dir / 'results.csv')
        state = self.checkpoint(epoch)
        if not opt.nosave or final:
            save_checkpoint(state, self.weights_dir / 'last.pt')
            if self.best_epoch == epoch:
                save_checkpoint(state, self.weights_dir / 'best.pt')
            if opt.save_period > 0 and epoch % opt.save_period == 0:
                save_checkpoint(state, self.weights_dir / f'epoch{epoch}.pt')
            self.held_back = None
        else:  # --nosave: a CPU copy (the live tensors move on)
            self.held_back = to_cpu(state)
        if stop:
            log(f'Stopping early: no improvement in the last {opt.patience} epochs; '
                f'best was epoch {self.best_epoch}')
        return stop

    def checkpoint(self, epoch):
        """All --resume needs, and the model's config for every reader."""
        return dict(epoch=epoch, best_fitness=self.best_fitness, best_epoch=self.best_epoch,
                    updates=self.updates,
                    last_opt_step=self.last_opt_step, model=self.model.state_dict(),
                    ema=self.ema.state_dict(), hyp=self.hyp, optimizer=self.optimizer.state_dict(),
                    scaler=self.scaler.state_dict(), opt=vars(self.opt) | {'resume': False},
                    date=datetime.now().isoformat(), config=self.model.config())

    def finish(self):
        """Strips last.pt and best.pt to the fp16 EMA weights; validates best.pt."""
        best = self.weights_dir / 'best.pt'
        if best.exists():  # (with --nosave it may never have been saved)
            strip_checkpoint(best)
            log(f'\nValidating {best}...')
            model = deepcopy(self.ema)  # this run's model, edits included
            model.load_state_dict(read_checkpoint(best)[1])
            half = self.amp if self.device.type == 'cuda' else None  # the original's
            validate(model.fuse(), self.val_loader, self.names, loss_fn=self.loss_fn, dtype=half,
                     iou_thres=0.65 if self.coco else 0.6, verbose=True,
                     plots_dir=None if self.opt.noplots else self.save_dir)
        strip_checkpoint(self.weights_dir / 'last.pt')  # until then --resume finishes the run

    def fit(self):
        opt = self.opt
        workers = self.train_loader.num_workers
        log(start_line(opt.img, workers, WORLD_SIZE, self.save_dir, opt.epochs))
        epoch = self.start_epoch - 1  # the last one run
        start = time.time()
        try:
            for epoch in range(self.start_epoch, opt.epochs):
                mean_losses = self.train_epoch(epoch)
                stop = self.end_epoch(epoch, mean_losses) if MAIN else False
                if from_rank0(stop, self.ddp):  # every process must leave the loop together
                    break
        except (KeyboardInterrupt, FloatingPointError, torch.OutOfMemoryError) as e:
            if MAIN and self.held_back:  # the last complete epoch, for --resume
                save_checkpoint(self.held_back, self.weights_dir / 'last.pt')
            stop_run(e, self.weights_dir / 'last.pt', opt.epochs)
        finally:
            if self.ddp:
                dist.destroy_process_group()
        if MAIN:
            hours = (time.time() - start) / 3600
            log(f'\n{epoch - self.start_epoch + 1} epochs completed in {hours:.3f} hours.')
            try:
                self.finish()
            except KeyboardInterrupt as e:  # last.pt is not yet stripped: --resume finishes
                stop_run(e, self.weights_dir / 'last.pt', opt.epochs)
            self.tensorboard.add_pictures(self.save_dir, epoch)
            log(f'Results saved to {self.save_dir}')
        return self.save_dir


def build_model(opt, resumed=None, data_names=None):
    """last.pt's model; else --cfg's (or the weights', anchors too) with --weights where they
    fit. Classes: --names, else the data's, the weights', COCO's."""
    if resumed:
        config = checked_config(opt.resume, config_of(resumed))
        return from_config(config, resumed['model'], opt.resume)
    config, weights = or_exit(read_checkpoint, opt.weights) if opt.weights else (None, None)
    names = train_names(opt, data_names, config)
    if config and not opt.cfg:
        model = YOLOv5(**dict(config, nc=len(names), names=names))
    else:
        scale, arch = parse_cfg(opt.cfg or 'n', SCALES, ARCHITECTURES)
        model = YOLOv5(scale, len(names), names, arch=arch)
    if weights:  # with --cfg the model keeps its own anchors
        loaded = transfer(model, weights, skip=['anchors'] if opt.cfg else [])
        log(f'Transferred {loaded}/{len(model.state_dict())} items from {opt.weights}')
    return model


def train_dataset(opt, data, names, hyp, stride):
    """The augmented training set of data_spec(--data)."""
    dataset = or_exit(YOLODataset, data['train'], opt.img, opt.batch // WORLD_SIZE, augment=True,
                      hyp=hyp, rect=opt.rect, stride=stride, cache=opt.cache, nc=len(names),
                      seed=opt.seed, single_cls=opt.single_cls, prefix='train: ')
    or_exit(require_labels, dataset.labels, dataset.files, opt.data)  # not all backgrounds
    return dataset


def val_dataset(opt, data, names, stride, batch, rect=True):
    """--task's split of data_spec(--data), in rectangular batches (not for a fixed-size ONNX)."""
    return or_exit(YOLODataset, data[opt.task], opt.img, batch, rect=rect, pad=0.5, stride=stride,
                   cache=opt.cache, nc=len(names), single_cls=opt.single_cls, split=opt.task,
                   prefix=f'{opt.task}: ')


def training_data(data='coco128.yaml', img=640, batch=16, hyp=None, **flags):
    """(dataset, loader) as `train.py --data DATA --img IMG --batch BATCH` makes them; hyp: HYP's
    changes, flags by name (rect=True, ...)."""
    opt = parse_args(['--data', str(data), '--img', str(img), '--batch', str(batch)])
    opt.workers = 0
    vars(opt).update(flags)
    spec = or_exit(data_spec, opt.data)
    names = spec['names'] or read_names()
    dataset = train_dataset(opt, spec, names, dict(HYP, **(hyp or {})), stride=32)
    loader = create_dataloader(dataset, opt.batch, opt.workers, shuffle=not opt.rect, cpu=True)
    return dataset, loader


def make_optimizer(model, name, lr, momentum, decay):
    """Three groups: biases, conv weights (decayed), normalization weights."""
    groups = [dict(params=[], weight_decay=group_decay) for group_decay in (0.0, decay, 0.0)]
    for module in model.modules():
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        for param_name, param in module.named_parameters(recurse=False):
            group = 0 if param_name == 'bias' else 2 if is_norm else 1
            groups[group]['params'].append(param)
    if name == 'SGD':
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    return getattr(torch.optim, name)(groups, lr=lr, betas=(momentum, 0.999))  # Adam, AdamW


def ema_update(ema, model, updates, decay=0.9999, tau=2000):
    """Moving average of the weights; its decay ramps up from 0: early epochs count less."""
    weight = decay * (1 - math.exp(-updates / tau))
    current = model.state_dict()
    with torch.no_grad():
        for key, value in ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(weight).add_(current[key].detach(), alpha=1 - weight)


# ---------------------------------------- autoanchor
# Whether the anchors fit the dataset's boxes under the loss's shape test, and new ones if not.
def label_wh(dataset, img_size, jitter=None):
    """Label widths and heights in pixels, in images whose long side is img_size."""
    shapes = img_size * dataset.sizes / dataset.sizes.max(1, keepdims=True)
    if jitter is not None:
        shapes = shapes * jitter
    wh = [labels[:, 3:5] * shape for shape, labels in zip(shapes, dataset.labels)]
    return np.concatenate(wh).astype(np.float32)


def anchor_metric(anchors, wh, thr):
    """Each label's best fit (1 / shape_ratio: 1 for an anchor of its shape), the best possible
    recall (the labels some anchor fits within thr), the mean anchors a label within thr."""
    fit = 1 / shape_ratio(wh, anchors)
    best = fit.max(1)[0]
    return best, (best > 1 / thr).float().mean(), (fit > 1 / thr).float().sum(1).mean()


def check_anchors(dataset, model, thr, img_size, seed=0):
    """The best possible recall of the anchors; under 0.98, new ones, kept if better."""
    detect = model.detect
    rng = np.random.default_rng(seed)
    wh = torch.tensor(label_wh(dataset, img_size, rng.uniform(0.9, 1.1, (len(dataset.sizes), 1))))
    _, recall, per_label = anchor_metric(detect.pixel_anchors().view(-1, 2).cpu(), wh, thr)
    msg = f'AutoAnchor: {per_label:.2f} anchors/target, {recall:.3f} Best Possible Recall (BPR). '
    if recall > 0.98:
        print(msg + 'Current anchors are a good fit to dataset')
        return
    print(msg + 'Anchors are a poor fit to dataset, attempting to improve...')

    def anchor_fitness(anchors, wh):  # the mean fit of the labels some anchor fits within thr
        best = anchor_metric(torch.tensor(anchors, dtype=torch.float32), wh, thr)[0]
        return torch.where(best > 1 / thr, best, 0.0).mean()
    count = detect.anchors.numel() // 2
    new = kmean_anchors(label_wh(dataset, img_size), count, anchor_fitness, seed=seed)
    _, new_recall, new_per_label = anchor_metric(torch.tensor(new, dtype=torch.float32), wh, thr)
    print(f'AutoAnchor: thr={1 / thr:.2f}: {new_recall:.4f} best possible recall, '
          f'{new_per_label:.2f} anchors past thr; anchors: '
          + ', '.join('%.0f,%.0f' % tuple(anchor) for anchor in new))
    if new_recall > recall:
        detect.set_anchors(torch.tensor(new))
        print('AutoAnchor: Done, new anchors saved to the model')
    else:
        print('AutoAnchor: Done, original anchors are better and are kept')


def kmean_anchors(wh0, count, anchor_fitness, generations=1000, seed=0):
    """count anchors (w, h) for label sizes wh0: k-means, then a genetic search of
    anchor_fitness; sorted by area."""
    rng = np.random.default_rng(seed)
    small = (wh0 < 3.0).any(1).sum()
    if small:
        print(f'AutoAnchor: WARNING: {small} of {len(wh0)} labels are smaller than 3 pixels')
    wh = wh0[(wh0 >= 2.0).any(1)]
    spread = np.maximum(wh.std(0), 1e-6)  # whitened: width and height count alike
    points = wh / spread
    wh = torch.tensor(wh)
    centres = points[rng.choice(len(points), count, replace=len(points) < count)]
    for _ in range(30):  # Lloyd's iterations
        nearest = ((points[:, None] - centres[None]) ** 2).sum(2).argmin(1)
        centres = np.array([points[nearest == cluster].mean(0) if (nearest == cluster).any()
                            else centres[cluster] for cluster in range(count)])
    anchors = centres * spread
    best = anchor_fitness(anchors, wh)
    for _ in range(generations):
        change = np.ones(anchors.shape)
        while (change == 1).all():  # mutate until something changes
            mutated = rng.random(anchors.shape) < 0.9  # which values change, and by how much:
            sigma = rng.random()
            noise = rng.standard_normal(anchors.shape)
            change = np.where(mutated, sigma * noise * 0.1 + 1, 1.0).clip(0.3, 3.0)
        candidate = (anchors * change).clip(min=2.0)
        candidate_fitness = anchor_fitness(candidate, wh)
        if candidate_fitness > best:
            best = candidate_fitness
            anchors = candidate
    return anchors[np.argsort(anchors.prod(1))]


# ---------------------------------------- validation
def box_iou(boxes1, boxes2, eps=1e-7):
    """IoU matrix of xyxy boxes (n, 4) and (m, 4)."""
    top_left1, bottom_right1 = boxes1[:, None].chunk(2, 2)  # (n, 1, 2) each
    top_left2, bottom_right2 = boxes2[None].chunk(2, 2)  # (1, m, 2) each
    inter = (torch.min(bottom_right1, bottom_right2) - torch.max(top_left1, top_left2))
    inter = inter.clamp(0).prod(2)
    area1 = (bottom_right1 - top_left1).prod(2)
    area2 = (bottom_right2 - top_left2).prod(2)
    return inter / (area1 + area2 - inter + eps)


def iou_pairs(iou, where):
    """The (label, prediction, IoU) rows where `where` is true, as numpy."""
    label, prediction = torch.where(where)
    return torch.stack((label, prediction, iou[label, prediction]), 1).cpu().numpy()


def first_of_each(pairs, column, best_first=True):
    """The first row for each value of a column (best IoU first if best_first), in the values'
    order: rows (0, 1, .5), (0, 2, .9), (1, 2, .7) give (0, 2, .9), (1, 2, .7) for column 0."""
    if best_first:
        pairs = pairs[pairs[:, 2].argsort()[::-1]]
    return pairs[np.unique(pairs[:, column], return_index=True)[1]]


def match_predictions(pred, label_cls, label_boxes, iouv):
    """True positives (predictions, IoU thresholds): a label matches one prediction."""
    correct = np.zeros((len(pred), len(iouv)), bool)
    iou = box_iou(label_boxes, pred[:, :4])
    same_class = label_cls[:, None] == pred[:, 5]
    for i, threshold in enumerate(iouv):
        pairs = iou_pairs(iou, (iou >= threshold) & same_class)
        pairs = first_of_each(pairs, 1)  # each prediction's best label
        # then each label's first prediction (by index, not IoU): the original's
        pairs = first_of_each(pairs, 0, best_first=False)
        correct[pairs[:, 1].astype(int), i] = True
    return correct


def confusion_add(matrix, det, labels, conf=0.25, iou_thres=0.45):
    """One image into the confusion matrix (rows predicted, columns true, background last), pairs
    at IoU > iou_thres, best first; background only where something paired (the original's)."""
    background = len(matrix) - 1
    det = det[det[:, 4] > conf]
    iou = box_iou(labels[:, 1:], det[:, :4])
    pairs = iou_pairs(iou, iou > iou_thres)
    pairs = first_of_each(pairs, 1)  # each detection's best label
    pairs = first_of_each(pairs, 0)  # each label's best detection
    paired_labels = pairs[:, 0].astype(int)
    paired_detections = pairs[:, 1].astype(int)
    classes = det[:, 5].int().tolist()
    for i, true_class in enumerate(labels[:, 0].int().tolist()):
        found = paired_detections[paired_labels == i]
        matrix[classes[found[0]] if len(found) == 1 else background, true_class] += 1
    for detection, predicted in enumerate(classes if len(pairs) else []):
        if detection not in paired_detections:
            matrix[predicted, background] += 1


def smooth(y, fraction):
    """A box filter over a fraction of y, its ends padded with their values."""
    size = round(len(y) * fraction * 2) // 2 + 1
    padded = np.concatenate((np.full(size // 2, y[0]), y, np.full(size // 2, y[-1])))
    return np.convolve(padded, np.ones(size) / size, 'valid')


def compute_ap(recall, precision):
    """COCO's AP: the 101-point area under the precision envelope (the best precision at this
    recall or more); and the envelope's recalls and precisions."""
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([1.0], precision, [0.0]))
    envelope = np.flip(np.maximum.accumulate(np.flip(precision)))
    points = np.linspace(0, 1, 101)
    return np.trapezoid(np.interp(points, recall, envelope), points), recall, envelope


def ap_per_class(tp, conf, pred_cls, target_cls, eps=1e-16):
    """Per class with labels: P and R at the confidence of the best mean F1, AP at 10 IoUs, and the
    PR (IoU 0.5) and F1 curves."""
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_labels = np.unique(target_cls, return_counts=True)
    px = np.linspace(0, 1, 1000)  # the curves' confidences (and recalls)
    ap = np.zeros((len(classes), tp.shape[1]))
    p_curve, r_curve, pr_curve = np.zeros((3, len(classes), 1000))  # against confidence, recall
    for row, cls in enumerate(classes):
        i = pred_cls == cls
        if not i.any():
            continue
        tpc = tp[i].cumsum(0)
        fpc = (1 - tp[i]).cumsum(0)
        recall = tpc / (n_labels[row] + eps)
        precision = tpc / (tpc + fpc)
        # at the curves' confidences (negated: np.interp needs them rising)
        r_curve[row] = np.interp(-px, -conf[i], recall[:, 0], left=0)
        p_curve[row] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for iou in range(tp.shape[1]):
            ap[row, iou], envelope_recall, envelope = compute_ap(recall[:, iou], precision[:, iou])
            if iou == 0:  # the curve at IoU 0.5, for the plot
                pr_curve[row] = np.interp(px, envelope_recall, envelope)
    f1 = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = smooth(f1.mean(0), 0.1).argmax()
    curves = dict(px=px, pr=pr_curve, f1=f1)
    return p_curve[:, best], r_curve[:, best], ap, classes.astype(int), n_labels, curves


def summarize(stats, names, verbose, plots_dir=None):
    """YOLOv5's table (each class with verbose), the PR and F1 curves; returns the metrics."""
    row = '%22s' + '%11i' * 2 + '%11.3g' * 4
    seen = len(stats['tp'])  # images
    stats = {name: np.concatenate(rows or [[]]) for name, rows in stats.items()}
    precision = recall = ap50 = ap = np.zeros(1)  # replaced, never changed in place
    maps = np.zeros(len(names))  # per class mAP50-95; the mean for a class without labels
    if not len(stats['target_cls']):
        log('WARNING: no labels in the validation set, no metrics')
    else:
        precision, recall, ap, classes, n_labels, curves = ap_per_class(**stats)
        ap50 = ap[:, 0]
        ap = ap.mean(1)
        maps += ap.mean()
        maps[classes] = ap
        log(row % ('all', seen, n_labels.sum(), precision.mean(), recall.mean(), ap50.mean(),
                   ap.mean()))
        for i, cls in enumerate(classes if verbose and len(names) > 1 else []):
            log(row % (names[cls], seen, n_labels[i], precision[i], recall[i], ap50[i], ap[i]))
        if plots_dir:
            f1 = smooth(curves['f1'].mean(0), 0.05)  # the mean F1, as the original plots it
            plot_pr_f1(curves, f1, [names[cls] for cls in classes], ap50.mean(), plots_dir)
    return {'metrics/precision': float(precision.mean()), 'metrics/recall': float(recall.mean()),
            'metrics/mAP_0.5': float(ap50.mean()), 'metrics/mAP_0.5:0.95': float(ap.mean()),
            'maps': maps}


@torch.inference_mode()
def validate(model, loader, names, conf_thres=0.001, iou_thres=0.6, max_det=300, loss_fn=None,
             dtype=None, verbose=False, plots_dir=None, augment=False, outputs=None,
             single_cls=False, watch=None):
    """Prints YOLOv5's validation table; returns the metrics (and loss terms) by name. outputs:
    for --save-json and --save-txt; single_cls: every prediction class 0."""
    device = next(model.parameters()).device
    model.eval()
    iouv = torch.linspace(0.5, 0.95, 10, device=device)
    stats = dict(tp=[], conf=[], pred_cls=[], target_cls=[])  # ap_per_class's, an image a row
    watch = watch or Stopwatch(device)
    losses = {}
    confusion = np.zeros((len(names) + 1, len(names) + 1)) if plots_dir else None
    log(('%22s' + '%11s' * 6) % ('Class', 'Images', 'Instances', 'P', 'R', 'mAP50', 'mAP50-95'))
    start = time.time()
    for batch_index, (imgs, targets, paths, to_original) in enumerate(loader):
        watch.start()
        imgs = imgs.to(device, non_blocking=True).float() / 255
        targets = targets.to(device)
        height, width = imgs.shape[2:]
        pixel_targets = targets.clone()  # (the loss takes them normalized)
        pixel_targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)
        watch.lap('pre-process')
        preds = []
        raws = []
        for pred, raw in predict(model, imgs, dtype, augment):  # NMS a chunk at a time
            watch.lap('inference')
            labels = None
            if outputs and outputs.hybrid:  # the labels of this chunk's images join the NMS
                labels = outputs.hybrid_rows(pixel_targets, len(preds), pred)
            preds += non_max_suppression(pred, conf_thres, iou_thres, multi_label=True,
                                         agnostic=single_cls, max_det=max_det, labels=labels)
            watch.lap('NMS')
            if loss_fn:
                raws.append(raw)
        for pred in preds if single_cls else []:
            pred[:, 5] = 0
        if loss_fn:
            terms = loss_fn([torch.cat(level) for level in zip(*raws)], targets)[1]
            losses = {name: losses.get(name, 0) + term for name, term in terms.items()}
        if plots_dir and batch_index == 0:
            shown = [pred[pred[:, 4] > 0.25].cpu() for pred in preds]
            picture = plots_dir / 'val_batch0_pred.jpg'
            plot_batch((imgs * 255).byte().cpu(), targets.cpu(), names, picture, shown)
        for i, pred in enumerate(preds):  # in the original image's pixels, as YOLOv5
            labels = pixel_targets[pixel_targets[:, 0] == i, 1:]
            label_boxes = scale_boxes(xywh2xyxy(labels[:, 1:5]), imgs.shape[2:], *to_original[i])
            labels = torch.cat((labels[:, :1], label_boxes), 1)
            boxes = scale_boxes(pred[:, :4].clone(), imgs.shape[2:], *to_original[i])
            pred = torch.cat((boxes, pred[:, 4:]), 1)
            if plots_dir:
                confusion_add(confusion, pred, labels)
            if outputs is not None:
                outputs.add(pred, paths[i], to_original[i][0])
            stats['tp'].append(match_predictions(pred, labels[:, 0], labels[:, 1:], iouv))
            stats['conf'].append(pred[:, 4].cpu().numpy())
            stats['pred_cls'].append(pred[:, 5].cpu().numpy())
            stats['target_cls'].append(labels[:, 0].cpu().numpy())
        print_count('Validating', batch_index, len(loader), start)
    metrics = summarize(stats, names, verbose, plots_dir)
    if plots_dir:
        save_confusion_matrix(confusion, names, plots_dir)
    log(watch.speed(len(stats['tp']), (loader.batch_size, 3, *imgs.shape[2:])))
    batches = max(len(loader), 1)
    return metrics | {f'val/{name}': float(term) / batches for name, term in losses.items()}


# ---------------------------------------- command line
def parse_args(argv=None):
    """train.py's flags, the original's (in support/cli.py); --hyp takes HYP's keys."""
    return train_args(argv, HYP, (SCALES, ARCHITECTURES), WORLD_SIZE, __doc__)


def run_val_only(opt):
    """--task val or test: one validation (several --weights: an ensemble); speed and study: the
    original's benchmarks (support/val_benchmarks.py)."""
    benchmark = opt.task in ('speed', 'study')
    data = or_exit(data_spec, opt.data, 'val' if benchmark else opt.task)
    save_dir = run_dir(opt.project, opt.name, opt.exist_ok)
    if benchmark:
        run_benchmark(opt, save_dir, lambda *args: val_once(opt, data, save_dir, *args))
    else:
        val_once(opt, data, save_dir, opt.weights, plots=True)
    log(f'Results saved to {save_dir}')


def val_once(opt, data, save_dir, weights, plots, watch=None):
    """Validates weights (a list: an ensemble) at --img; returns the metrics and images."""
    device = select_device(opt.device)
    model = or_exit(load_any, weights, device, fuse=True, trust=opt.trust_code, img=opt.img,
                    augment=opt.augment)
    model = model.to(memory_format=torch.channels_last)
    names = or_exit(val_names, opt, data['names'], model)
    fixed = getattr(model, 'fixed', None) is not None  # a fixed-size ONNX: square images
    opt.img = check_img_size(opt.img, stride=model.max_stride)
    val = val_dataset(opt, data, names, model.max_stride, opt.batch, rect=not fixed)
    loader = create_dataloader(val, val.batch_size, opt.workers, cpu=device.type == 'cpu')
    outputs = ValOutputs(save_dir, opt)  # --save-json, --save-txt
    metrics = or_exit(validate, model, loader, names, opt.conf_thres, opt.iou_thres, opt.max_det,
                      verbose=opt.verbose or len(names) < 50, watch=watch,
                      dtype=half_dtype(device) if opt.half else None, augment=opt.augment,
                      plots_dir=save_dir if plots else None, outputs=outputs,
                      single_cls=opt.single_cls)
    or_exit(outputs.save, weights, data, val.files)
    return metrics, len(val)


def main(argv=None):
    """The command line; one message for running out of GPU memory anywhere."""
    argv = sys.argv[1:] if argv is None else argv
    opt = parse_args(argv)
    gpus = len(opt.device.split(','))
    if gpus > 1 and LOCAL_RANK == -1:  # several GPUs: a process each (DDP)
        run_under_torchrun(__file__, argv, gpus)
    try:
        if opt.evolve:  # support/evolve.py trains a run per generation
            return evolve(opt, dict(HYP, **dict(opt.hyp)), lambda run: Trainer(run).fit(), fitness)
        return run_val_only(opt) if opt.val_only else Trainer(opt).fit()
    except torch.OutOfMemoryError:
        raise out_of_memory(opt) from None


if __name__ == '__main__':
    main()
