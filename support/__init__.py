"""
The support code under the five stages (data.py, model.py, loss.py, train.py, detect.py): nothing here is
object detection, and a first read skips it. Each file holds one concern; the stages import from them, and
they never import a stage.

  files.py           writing files atomically (checkpoints, pictures, text), with clear errors
  console.py         the progress lines (training, label scan, validation)
  cli.py             command-line types, devices, the mixed-precision choice, autobatch
  datasets.py        image and label files on disk: finding, checking, decoding and caching them (RAM, .npy);
                     image weights, quads; class names; box formats
  downloads.py       fetching files (mirrors, resume) and unpacking zips into ../datasets
  data_yaml.py       data YAMLs (a small YAML reader), the datasets known by name, class names
  checkpoints.py     checkpoints on disk: the original's pickles read without its code, ours, stripping
  runs.py            run folders, resume and torchrun restarts, DDP, non-finite steps, how a stopped run ends
  results.py         results.csv, COCO JSON results and validation's label files
  plots.py           every picture: boxes, batches, charts, results.png, curves, confusion matrix, labels.jpg
  loggers.py         TensorBoard events, where tensorboard is installed
  evolve.py          --evolve: the search over the hyperparameters, a training run a generation
  val_benchmarks.py  --val-only --task speed and --task study
  sources.py         detect.py's inputs (files, videos, webcams, streams) and outputs (labels, crops, CSV)
"""
