#!/usr/bin/env python3
"""Render nbs/index.ipynb as README.md (nbdev_readme needs quarto, which cannot be installed offline).

    python tools/nb2readme.py            # write README.md
    python tools/nb2readme.py --check    # exit 1 if README.md is stale

Markdown cells are copied; code cells become ```python blocks (cells marked `#| hide` are skipped);
text/markdown outputs of executed cells are kept. A markdown line `<!-- include: PATH -->` (PATH relative to the
repository) is replaced by that file's text, so README shows the committed reference tables without copying
their numbers into the notebook. Standard library only.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


INCLUDE = re.compile(r'^<!-- include: (?P<path>\S+) -->$', re.M)


def _include(m):
    path = ROOT/m['path']
    return path.read_text().strip('\n') if path.exists() else f'*({m["path"]} not generated yet: run `make main`)*'


def render(nb_path=ROOT/'nbs'/'index.ipynb') -> str:
    "README text for the index notebook."
    nb = json.loads(Path(nb_path).read_text())
    parts = ['<!-- generated from nbs/index.ipynb by tools/nb2readme.py: edit the notebook, not this file -->']
    for c in nb['cells']:
        src = ''.join(c['source']).strip('\n')
        if c['cell_type'] == 'markdown':
            parts.append(INCLUDE.sub(_include, src))
        elif c['cell_type'] == 'code' and src and not src.lstrip().startswith('#| hide'):
            parts.append('```python\n' + src + '\n```')
            for o in c.get('outputs', []):
                data = o.get('data', {})
                if 'text/markdown' in data: parts.append(''.join(data['text/markdown']))
                elif 'text' in o or 'text/plain' in data: parts.append('```\n' + ''.join(o.get('text') or data['text/plain']).rstrip() + '\n```')
    return '\n\n'.join(parts) + '\n'


if __name__ == '__main__':
    unknown = [a for a in sys.argv[1:] if a != '--check']
    if unknown:   # --help included: print the usage and write nothing
        print(__doc__.strip() if unknown in (['--help'], ['-h']) else f'nb2readme: unknown argument(s) {unknown}; usage:\n{__doc__.strip()}')
        sys.exit(0 if unknown in (['--help'], ['-h']) else 2)
    text = render()
    if '--check' in sys.argv:
        ok = (ROOT/'README.md').exists() and (ROOT/'README.md').read_text() == text
        print('README.md is up to date' if ok else 'README.md is stale: run python tools/nb2readme.py')
        sys.exit(0 if ok else 1)
    (ROOT/'README.md').write_text(text)
