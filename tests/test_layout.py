"The package's layout: notebooks numbered by layer with unique prefixes, and every import pointing to a lower-numbered notebook."
import ast, re, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS, PKG = ROOT/'nbs', ROOT/'har_kit'


def _module_notebooks():
    "module name -> notebook stem, from each notebook's `#| default_exp`."
    out = {}
    for nb in sorted(NBS.glob('*.ipynb')):
        m = re.search(r'#\| default_exp (\w+)', nb.read_text(encoding='utf-8'))
        if m:
            assert m.group(1) not in out, f'{nb.name} and {out.get(m.group(1))} both export har_kit.{m.group(1)}'
            out[m.group(1)] = nb.stem
    return out


# the command line dispatches to every layer by name (it is the top notebook); bench builds the models a user names;
# a model file names its builder
DYNAMIC_IMPORTS = {'cli', 'bench', 'model_file', 'run_params'}


def _rank(stem): return int(stem.split('_', 1)[0])


def _kit_imports(path, source=None):
    "(line, imported kit module, inside a function?) for every import of a har_kit module in `path` (or in `source`), `importlib` included."
    tree, out = ast.parse(path.read_text(encoding='utf-8') if source is None else source, str(path)), []
    funcs = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
    for node in ast.walk(tree):
        local = id(node) in funcs
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1 and not mod: out += [(node.lineno, a.name, local) for a in node.names]
            elif node.level == 1: out.append((node.lineno, mod.split('.')[0], local))
            elif mod.startswith('har_kit.'): out.append((node.lineno, mod.split('.')[1], local))
            elif mod == 'har_kit': out += [(node.lineno, a.name, local) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split('.')[1], local) for a in node.names if a.name.startswith('har_kit.')]
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'import_module' and node.args:
            a = node.args[0]
            name = a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else '<computed>'
            out.append((node.lineno, name.removeprefix('har_kit.') if name.startswith('har_kit.') else name, local))
    return out


def test_every_notebook_prefix_is_unique_and_numbered():
    stems = [nb.stem for nb in NBS.glob('*.ipynb') if nb.stem != 'index']
    prefixes = [s.split('_', 1)[0] for s in stems]
    assert all(re.fullmatch(r'\d\d', p) for p in prefixes), sorted(stems)
    dup = sorted({p for p in prefixes if prefixes.count(p) > 1})
    assert not dup, f'shared prefixes: {dup}'


def test_every_module_has_one_notebook():
    mods = _module_notebooks()
    exported = {p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_')}
    assert exported == set(mods), exported ^ set(mods)


def test_every_import_points_to_a_lower_numbered_notebook():
    mods, bad = _module_notebooks(), []
    for mod, stem in mods.items():
        for line, tgt, _ in _kit_imports(PKG/f'{mod}.py'):
            if tgt == '__version__' or (tgt == '<computed>' and mod in DYNAMIC_IMPORTS): continue
            if tgt not in mods: bad.append(f'{mod}.py:{line} imports {tgt!r} (not a kit module)'); continue
            if _rank(mods[tgt]) >= _rank(stem): bad.append(f'{mod}.py:{line} ({stem}) imports {tgt} ({mods[tgt]})')
    assert not bad, '\n'.join(bad)


def _cell_imports(source, where='cell'):
    "Kit modules a notebook cell imports (`_kit_imports` of its code, IPython's %/! lines left out)."
    code = '\n'.join(l for l in source.splitlines() if not l.lstrip().startswith(('%', '!')))
    return [mod for _, mod, _ in _kit_imports(where, code)]


def test_notebook_cells_import_only_lower_numbered_notebooks():
    "Every notebook cell, exported or not, imports only lower-numbered notebooks, so the notebooks read in order."
    import json
    mods, bad = _module_notebooks(), []
    for nb in sorted(NBS.glob('[0-9]*.ipynb')):
        for i, cell in enumerate(json.loads(nb.read_text(encoding='utf-8'))['cells']):
            if cell['cell_type'] != 'code': continue
            for tgt in _cell_imports(''.join(cell['source']), f'{nb.name} cell {i}'):
                if tgt in mods and _rank(mods[tgt]) > _rank(nb.stem):
                    bad.append(f'{nb.name} cell {i} imports har_kit.{tgt} ({mods[tgt]})')
    assert not bad, '\n'.join(bad)


def test_the_cell_check_sees_an_upward_import():
    assert _cell_imports('%matplotlib inline\nfrom har_kit.results import X\nimport har_kit.cli\nfrom har_kit import data') == ['results', 'cli', 'data']


def test_no_star_imports_and_no_hidden_kit_imports():
    bad = []
    for p in PKG.glob('*.py'):
        if p.stem.startswith('_'): continue
        if re.search(r'^\s*from \S+ import \*', p.read_text(encoding='utf-8'), re.M): bad.append(f'{p.name}: import *')
        for line, tgt, local in _kit_imports(p):
            if local and p.stem != 'core' and tgt != '<computed>': bad.append(f'{p.name}:{line} imports {tgt} inside a function')
            if tgt == '<computed>' and p.stem not in DYNAMIC_IMPORTS: bad.append(f'{p.name}:{line} importlib with a computed name')
    assert not bad, '\n'.join(bad)


RUN_LAYER = ('run_config', 'run_params', 'results', 'cards', 'render', 'runs', 'reproduce', 'launch', 'cli')


def test_the_run_layer_imports_no_torch():
    "`har-kit status`, `params` and `--help` answer without importing torch or torchvision (2-4 s before): the run "
    "layer's modules import neither, nor does status's look at a finished run's masks (`mask_input`) for a section whose "
    "parameters name no mask_dir; `config`, a plan and a run import them for the method's config, a run for its environment record."
    code = (f"import sys\nimport {', '.join('har_kit.' + m for m in RUN_LAYER)}\n"
            "for s in ('campar', 'cfar', 'masks', 'tables'): assert har_kit.runs.mask_input(s, dict(dataset='rap', data_root='/data/rap')) == {}\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == '[]', r.stdout + r.stderr[-2000:]


def test_the_layout_test_sees_an_upward_import(tmp_path):
    "The checker itself: a module importing a later notebook's module is found."
    f = tmp_path/'x.py'
    f.write_text('from .runs import run_notebook\ndef f():\n    from har_kit.cli import main\n'
                 "import importlib\nimportlib.import_module('har_kit.data')\n")
    assert _kit_imports(f) == [(1, 'runs', False), (3, 'cli', True), (5, 'data', False)]


@pytest.mark.parametrize('section', ['masks', 'dahar', 'campar', 'cfar', 'tables', 'data'])
def test_sections_resolve_by_name(section):
    "Run directories and references name a section by its notebook's suffix, so renumbering never moves them."
    from har_kit.run_params import find_notebook
    assert find_notebook(section).stem.split('_', 1)[1] == section


def test_contributing_maps_every_notebook_in_order():
    "CONTRIBUTING.md's notebook -> module table is the one map: every notebook, in number order, with its module."
    rows = re.findall(r'^\| `(\d\d_\w+)` \| `(\w+)` \|', (ROOT/'CONTRIBUTING.md').read_text(encoding='utf-8'), re.M)
    mods = _module_notebooks()
    assert rows == sorted((stem, mod) for mod, stem in mods.items()), 'update the map in CONTRIBUTING.md'


@pytest.mark.parametrize('notebook, config', [('dahar', 'har_kit.dahar_train:DaHarConfig'), ('campar', 'har_kit.campar_train:CamParConfig'),
                                              ('cfar', 'har_kit.cfar:CFARRunConfig')])
def test_run_configs_are_their_notebooks_parameters(notebook, config):
    "Each method's run config has the names and defaults of its notebook's parameters cell (out_dir aside): a papermill run and a config agree."
    import dataclasses, importlib
    from har_kit.run_params import notebook_parameters
    mod, name = config.split(':')
    params = dict(notebook_parameters(notebook)); params.pop('out_dir')
    assert params == dataclasses.asdict(getattr(importlib.import_module(mod), name)())


def test_every_figure_is_written_whole():
    "A PNG is written under a temporary name and renamed (`core.save_figure`, or `atomic_path` where the user names the file): an interrupt never leaves half a figure."
    import json
    bad = []
    for nb in sorted(NBS.glob('*.ipynb')):
        for i, cell in enumerate(json.loads(nb.read_text(encoding='utf-8'))['cells']):
            for line in ''.join(cell['source']).splitlines() if cell['cell_type'] == 'code' else ():
                if '.savefig(' in line and 'with atomic_path(' not in line: bad.append(f'{nb.name} cell {i}: {line.strip()}')
    assert not bad, 'write figures with har_kit.core.save_figure:\n' + '\n'.join(bad)
