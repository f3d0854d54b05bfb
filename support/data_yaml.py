"""
Data YAMLs, read by a small YAML reader of their own (no PyYAML), and the datasets known by name
(`--data coco128.yaml` needs no file): which folders hold a dataset's splits, its class names, and its
download, fetched when the dataset is missing. Every value is checked where it is read.
"""
import functools
import json
import re
import textwrap
from pathlib import Path

from support.datasets import COCO_NAMES, MAX_CLASSES, read_names
from support import downloads
from support.downloads import download_zip, is_downloaded


def _uncomment(line):
    """The line without its comment: a # at the start or after a blank, outside quotes."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in '\'"' and (i == 0 or line[i - 1] in ' \t[,:'):
            quote = c
        elif c == '#' and (i == 0 or line[i - 1] in ' \t'):
            return line[:i].rstrip()
    return line.rstrip()


# The patterns below never backtrack more than once per character (a plain text ends on a non-blank, a number has
# one way to split): a hostile line of a megabyte is read in linear time, where `[^:#]*?\s*:` would be quadratic.
QUOTED = r"'(?:[^']|'')*'|" + r'"(?:[^"\\]|\\.)*"'


FLOW_ITEM = re.compile(rf"""\s*({QUOTED}|[^\s,'"](?:[^,]*[^\s,])?)\s*(,|\Z)""")  # one item of [a, 'b c']


NUMBER = re.compile(r'[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?')


def _flow_list(s, where):
    """The items of a flow list's inside `a, 'b c', "d"`; anything else (a quote left open, text after a quoted
    item) is an error: ['a, 'b'] must not be read as two odd names."""
    items, pos = [], 0
    while s[pos:].strip():
        m = FLOW_ITEM.match(s, pos)
        if not m:
            raise ValueError(f'{where}: not a valid list: [{s[:60]}]')
        items.append(_scalar(m[1], where))
        pos = m.end()
        if not m[2]:
            break
    return items


def _scalar(text, where):
    """A quoted or plain scalar, or a flow list [a, 'b c'] of them; plain ones may be null, int or float."""
    s = text.strip()
    if s[:1] == '[' and s[-1:] == ']':
        return _flow_list(s[1:-1], where)
    if len(s) > 1 and s[0] == s[-1] and s[0] in '\'"' and re.fullmatch(QUOTED, s):
        return s[1:-1].replace("''", "'") if s[0] == "'" else json.loads(s)
    if s[:1] and s[0] in '[]{}&*!%@`\'"|>':
        raise ValueError(f'{where}: {s[:40]!r} is not in the YAML read here (no flow mappings, anchors, tags)')
    if NUMBER.fullmatch(s):
        return int(s) if re.fullmatch(r'[-+]?\d+', s) else float(s)
    return None if s in ('', '~', 'null', 'Null', 'NULL') else s


def _key_value(line, where):
    m = re.fullmatch(r"""\s*('[^']*'|"[^"]*"|[^\s'"#:](?:[^:#]*[^\s:#])?)\s*:(?:\s+(.*))?""", line)
    if not m:
        raise ValueError(f'{where}: not a `key: value` line: {line.strip()[:60]!r}')
    return _scalar(m[1], where), (m[2] or '').strip()


def read_yaml(path, key_lines=None):
    """The YAML that dataset files use: `key: value` lines with plain or quoted scalars and flow lists, block
    lists (- a) and one nested mapping level (names: 0: person; or an export service's roboflow: block, read and
    unused), block scalars (| and >) and comments. Anything else is an error naming the file and line. A dict given
    as key_lines gets each top-level key's `file:line`, for the errors of those who check the values."""
    try:
        lines, out = Path(path).read_text(encoding='utf-8-sig').splitlines(), {}  # -sig: a BOM may lead
    except UnicodeDecodeError as e:
        raise ValueError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start})') from None
    key_lines = {} if key_lines is None else key_lines
    tops = [i for i, x in enumerate(lines) if i == 0 or x.strip() and x[0] not in ' \t' and not x.startswith('- ')]
    for i, end in zip(tops, tops[1:] + [len(lines)]):
        line, where = _uncomment(lines[i]), f'{path}:{i + 1}'
        block = [(f'{path}:{j + 1}', lines[j]) for j in range(i + 1, end)]  # the lines under this one: a nested block
        if line.strip() in ('', '---', '...'):
            continue
        if line[0] in ' \t':  # only the first line can be: any other is in the block of the line above
            raise ValueError(f'{where}: unexpected indentation')
        key, value = _key_value(line, where)
        key_lines[key] = where
        if value.rstrip('-+') in ('|', '>'):  # a block scalar: the text of the lines under it
            text = textwrap.dedent('\n'.join(text for _, text in block)).strip('\n')
            out[key] = text + '\n' if value[0] == '|' else ' '.join(text.split())
            continue
        items, mapping = [], {}  # else a scalar, or a block list or a mapping one level deep
        block = [(where, _uncomment(text)) for where, text in block if _uncomment(text).strip()]
        for where, text in block:
            if len(text) - len(text.lstrip()) != len(block[0][1]) - len(block[0][1].lstrip()) or value:
                raise ValueError(f'{where}: ' + ('unexpected indentation' if value else 'one nested level only'))
            if text.strip()[:2] in ('- ', '-'):
                items.append(_scalar(text.strip()[1:], where))
            else:
                k, v = _key_value(text, where)
                mapping[k] = _scalar(v, where)
        if items and mapping:
            raise ValueError(f'{path}: {key}: a list and a mapping mixed')
        out[key] = _scalar(value, where) if value else items or mapping or None
    return out


ASSETS = 'https://github.com/ultralytics/assets/releases/download/v0.0.0/'


KNOWN_DATA = {  # the original's data YAMLs that `--data coco.yaml` finds without a file: (url, extract into) pairs
    'coco128': dict(path='coco128', train='images/train2017', val='images/train2017',
                    download=[(ASSETS + 'coco128.zip', '.')]),
    'coco': dict(path='coco', train='train2017.txt', val='val2017.txt',  # not test2017.zip (7 GB): training needs none
                 download=[(ASSETS + 'coco2017labels.zip', '.'), ('http://images.cocodataset.org/zips/train2017.zip',
                           'coco/images'), ('http://images.cocodataset.org/zips/val2017.zip', 'coco/images')]),
}


def data_spec(data, task='val'):
    """--data as {'train': sources, 'val': sources, 'names': list or None} (and 'test' with task 'test'), from a data
    YAML (paths resolved by _resolve, its dataset downloaded when missing), a dataset known by name (coco128, coco:
    fetched into ../datasets), or a dataset root, an image folder or a .txt list (validated on its val split, or its
    only one, or its images). A YAML's values are checked here, where they are read: a wrong one is an error naming
    its file and line."""
    p, lines = Path(data), {}
    if p.stem in KNOWN_DATA and p.suffix in ('.yaml', '.yml', '') and not p.exists():
        cfg, base = dict(KNOWN_DATA[p.stem], names=COCO_NAMES), downloads.DATASETS_DIR
        zips = [(url, base / dest, None) for url, dest in cfg.pop('download')]  # (url, folder): for these only
    elif p.suffix in ('.yaml', '.yml'):
        if not p.is_file():
            raise FileNotFoundError(f'{data}: no such file (known without one: {", ".join(KNOWN_DATA)})')
        cfg, base, zips = read_yaml(p, lines), p.parent, []
    else:
        return dict(train=str(data), val=str(data), test=str(data), names=None)
    value = functools.partial(_yaml_value, cfg, lines, data)
    names = _class_names(value('names', (list, dict), 'a list of names or `index: name` lines'),
                         value('nc', int, f'a number of classes from 1 to {MAX_CLASSES}'), lines, data)
    # relative to the YAML's folder; an absolute path stays so
    root = base / _path_values(value('path', (str, int), 'a folder') or '')
    download = value('download', str, 'the URL of a .zip (or a script, which is never run)')
    if download and re.fullmatch(r'https?://\S+\.zip', download.strip()):  # a YAML's URL of one zip
        zips = [(download.strip(), root.parent, root.name)]  # into path's parent, as the original
    wanted = dict.fromkeys(('train', 'val', task))  # the test split only when asked for: often it is not there
    splits = {k: _path_values(value(k, (str, int, list), 'a path or a list of paths', (str, int))) for k in wanted}
    done = [is_downloaded(url, dest) for url, dest, _ in zips]
    if any(done) and not all(done):  # a download that stopped halfway goes on first
        _download_dataset(data, download, zips, root)
    for attempt in range(2):  # the second after the download
        try:
            return dict({k: _resolve(splits, k, root, base, data) for k in splits}, names=names)
        except FileNotFoundError:
            if attempt or not (download or zips):
                raise
            # all downloaded yet the dataset is not there: a wrong zip came, fetch it once more
            _download_dataset(data, download, zips, root, again=all(done))


def _path_values(value):
    """A split's path(s) as text: `train: 2017` names the folder 2017."""
    return [str(v) for v in value] if isinstance(value, list) else None if value is None else str(value)


def train_names(opt, data_names, config):
    """Training's class names: --names, else the data's, the --weights' (config), COCO's; one with --single-cls."""
    names = data_names or (config['names'] if config else read_names())
    if opt.names:
        names = read_names(opt.names)
    if opt.single_cls and len(names) != 1:  # every class trains as one
        names = ['item']
    return names


def val_names(opt, data_names, model):
    """--val-only's class names: --names, else the data's, else the model's; one with --single-cls (every label and
    prediction is class 0 then, as the original's). Raises ValueError if they are not the model's classes."""
    names = read_names(opt.names) if opt.names else data_names or model.names
    if opt.single_cls:
        return names[:1]
    if len(names) != model.nc:  # as the original: the boxes would have classes without names
        raise ValueError(f'{opt.weights} has {model.nc} classes, {opt.names or opt.data} names {len(names)}')
    return names


def _yaml_value(cfg, lines, data, key, kinds, what, items=object):
    """cfg[key] (None if absent) if it is of one of these kinds (a list: of items), else a ValueError naming the
    file and line."""
    v = cfg.get(key)
    if v is None or isinstance(v, kinds) and (not isinstance(v, list) or all(isinstance(x, items) for x in v)):
        return v
    raise ValueError(f'{lines.get(key, data)}: {key}: {v!r} is not {what}')


def _class_names(names, nc, lines, data):
    """The class names of names: (a list, or {index: name}) and nc:, as strings (`names: [0, 1, 2]` is common for
    digits); None if neither is given. Bounded by MAX_CLASSES: a YAML must not make us build 10^9 names."""
    where = lines.get('names', data)
    if nc is not None and not 0 < nc <= MAX_CLASSES:
        raise ValueError(f'{lines.get("nc", data)}: nc: {nc} is not a number of classes from 1 to {MAX_CLASSES} '
                         f'(a bound no real dataset reaches)')
    if isinstance(names, dict):  # {index: name}
        bad = [k for k in names if type(k) is not int or not 0 <= k < MAX_CLASSES]
        if bad:
            raise ValueError(f'{where}: names: {bad[0]!r} is not a class index from 0 to {MAX_CLASSES - 1} (the '
                             f'lines are `index: name`, e.g. 0: person)')
        names = [names.get(i, f'class{i}') for i in range(max(names) + 1)] if names else None
    bad = [x for x in names or [] if not isinstance(x, (str, int, float))]
    if bad:
        raise ValueError(f'{where}: names: {bad[0]!r} is not a class name')
    if len(names or []) > MAX_CLASSES:
        raise ValueError(f'{where}: names: more than {MAX_CLASSES} (a bound no real dataset reaches)')
    if names is not None and nc is not None and nc != len(names):
        raise ValueError(f'{data}: nc is {nc} but {len(names)} names are given')
    return [str(x) for x in names] if names else [f'class{i}' for i in range(nc)] if nc else None


def is_coco(data):
    """Whether data_spec's dataset is COCO, told as the original tells it: its val split is coco/val2017.txt."""
    val = data['val'] if isinstance(data['val'], list) else [data['val']]
    return len(val) == 1 and Path(val[0]).as_posix().endswith('coco/val2017.txt')


def _resolve(cfg, split, root, base, data):
    """The sources of a split: each relative to `path`, else the YAML's folder; `../x` also as `x` (the form of
    export services, whose data.yaml sits in the dataset root beside train/ and valid/)."""
    found = []
    for entry in cfg.get(split) if isinstance(cfg.get(split), list) else [cfg.get(split)] * bool(cfg.get(split)):
        tried = [root / entry] + [root / entry[3:]] * entry.startswith('../') + [base / entry]
        found += [str(next((t for t in tried if t.exists()), ''))]
        if not found[-1]:
            raise FileNotFoundError(f'{split}: {entry} not found; tried ' + ', '.join(str(t.resolve()) for t in tried))
    if not found:
        raise ValueError(f'{data}: no {split}: in the data YAML')
    return found


def _download_dataset(data, download, zips, root, again=False):
    """A missing dataset, fetched: the zips of a known dataset or of a YAML `download: URL`. A download: that is a
    Python script is never run (the original exec()s it): the error names what to fetch and where to put it."""
    if not zips:
        urls = ', '.join(re.findall(r'https?://[^\s\'"]+', download)) or 'the dataset'
        raise FileNotFoundError(f'{data}: dataset not found, and its download: is a script, which is never run '
                                f'here. Fetch {urls} by hand and unpack it to {root.resolve()}')
    errors = []
    for url, dest, folder in zips:
        try:
            download_zip(url, dest, folder, again)
        except (FileNotFoundError, ValueError) as e:
            errors.append(str(e))
    if errors:
        raise FileNotFoundError(f'{data}: dataset not found and not downloaded:\n  ' + '\n  '.join(errors))
