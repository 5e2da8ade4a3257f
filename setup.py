"Packaging for har_kit: everything is read from settings.ini (nbdev 2 layout)."
import json, shutil, subprocess
from configparser import ConfigParser
from pathlib import Path
import setuptools
from setuptools.command.build_py import build_py

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
extras = {name: cfg.get(f'{name}_requirements', '').split() for name in ('export', 'cluster')}

# The section notebooks ship inside the wheel as `har_kit.notebooks`, so `pip install har_kit` followed by
# `har-kit run` / `har-kit reproduce` works without a clone.
packages = setuptools.find_packages(include=['har_kit', 'har_kit.*']) + ['har_kit.notebooks']


HERE = Path(__file__).resolve().parent

class BuildPy(build_py):
    "build_py that copies the package afresh and stamps the source commit into it (har_kit/BUILD_COMMIT): runs of a wheel name it."
    def run(self):
        if not (getattr(self, 'editable_mode', False) or self.dry_run):   # a notebook or module renamed or deleted since
            shutil.rmtree(Path(self.build_lib)/'har_kit', ignore_errors=True)   # an earlier build must not ship from build/
        super().run()
        if getattr(self, 'editable_mode', False) or self.dry_run: return   # an editable install is the clone: runs read git
        def git(*args):
            try: return subprocess.run(['git', *args], cwd=HERE, capture_output=True, text=True, timeout=10).stdout.strip()
            except (OSError, subprocess.SubprocessError): return ''
        stamp = Path(self.build_lib)/'har_kit'/'BUILD_COMMIT'
        top = git('rev-parse', '--show-toplevel')   # this source tree's own checkout, not one it happens to sit in
        commit = git('rev-parse', 'HEAD') if top and Path(top).resolve() == HERE else ''
        if not commit: stamp.unlink(missing_ok=True); return   # e.g. built from an sdist: no stamp, never an older one
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(dict(git_commit=commit, git_dirty=bool(git('status', '--porcelain', '--', 'har_kit', 'nbs')))) + '\n')


setuptools.setup(
    cmdclass={'build_py': BuildPy},
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    author=cfg['author'], author_email=cfg['author_email'], license='Apache-2.0',
    url=cfg['git_url'], keywords=cfg['keywords'].split(), project_urls={'Source': cfg['git_url']},
    classifiers=['Development Status :: 3 - Alpha', 'Intended Audience :: Science/Research',
                 'Natural Language :: English',
                 'Topic :: Scientific/Engineering :: Image Recognition'] +
                [f'Programming Language :: Python :: 3.{v}' for v in range(int(cfg['min_python'].split('.')[1]), 14)],
    packages=packages, package_dir={'har_kit.notebooks': cfg['nbs_path']},
    package_data={'har_kit.notebooks': ['*.ipynb']}, include_package_data=True,
    install_requires=requirements, extras_require={'dev': dev_requirements, **extras},
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(), long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
