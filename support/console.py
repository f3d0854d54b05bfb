"""
The console's progress lines: live on a terminal (rewritten in place), printed once, at the end, into a log file.
"""
import sys
import time


def print_progress(row, i, n, start, header=None):
    """The line of batch i of n: each value of row {name: value} under its name (text as it is, numbers to 4
    digits), then speed and ETA. The names are printed first if header (default: at batch 0); the line is live on a
    terminal, else printed once, at the end."""
    live = sys.stdout.isatty()
    widths = [max(11, len(name) + 1) for name in row]  # the original's 11, more for a longer name
    if header or header is None and i == 0:
        print('\n' + ''.join(f'{name:>{width}}' for name, width in zip(row, widths)), flush=True)
    if not (live or i == n - 1):
        return
    values = ''.join(f'{v:>{width}}' if isinstance(v, str) else f'{float(v):>{width}.4g}'
                     for v, width in zip(row.values(), widths))
    speed = (i + 1) / (time.time() - start)
    eta = f'  {i + 1}/{n} {speed:.2f}it/s ETA {(n - i - 1) / speed:.0f}s'
    print(('\r' if live else '') + values + eta, end='\n' if i == n - 1 else '', flush=True)


def start_line(img, workers, world_size, save_dir, epochs):
    """What training prints before its first epoch, the original's words."""
    return (f'Image sizes {img} train, {img} val; {workers} dataloader workers; {world_size} process(es); '
            f'results to {save_dir}\nStarting training for {epochs} epochs...')


def print_count(what, i, n, start):
    """A progress line for step i of n of what (label scan, validation batches): count, speed and ETA."""
    live = sys.stdout.isatty()
    if not (live or i == n - 1):
        return
    speed = (i + 1) / max(time.time() - start, 1e-9)
    line = f'{what}: {i + 1}/{n} {speed:.2f}it/s ETA {(n - i - 1) / speed:.0f}s'
    print(('\r' if live else '') + line, end='\n' if i == n - 1 else '', flush=True)
