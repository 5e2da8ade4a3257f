"Packaging: settings.ini and environment.yml list the same requirements; the console script is wired."
import configparser, os, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _settings_reqs():
    c = configparser.ConfigParser(delimiters=['='])
    c.read(ROOT/'settings.ini')
    return c['DEFAULT']['requirements'].split() + c['DEFAULT']['dev_requirements'].split()


def _env_reqs():
    lines = (ROOT/'environment.yml').read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == '- pip:')
    return [l.strip()[2:] for l in lines[start+1:] if l.strip().startswith('- ') and l.strip() != '- -e .']


def test_environment_yml_matches_settings_ini():
    assert sorted(_settings_reqs()) == sorted(_env_reqs())


def test_known_good_pins():
    reqs = _settings_reqs()
    for pin in ('torch==2.14.1', 'torchvision==0.29.1', 'nbdev==2.4.14', 'execnb<0.2'):
        assert pin in reqs, pin
    assert any(re.fullmatch(r'fastcore.*<2', r) for r in reqs)


def test_settings_keep_parameters_tag():
    c = configparser.ConfigParser(delimiters=['='])
    c.read(ROOT/'settings.ini')
    assert 'tags' in c['DEFAULT']['allowed_cell_metadata_keys'].split()


def test_console_script_help(capsys):
    "--help and --version exit 0; no subcommand is a usage error (2), with the usage on stderr."
    from har_kit import __version__
    from har_kit.cli import main, usage
    assert main(['--help']) == 0 and 'reproduce' in usage() and 'reproduce' in capsys.readouterr().out
    assert main(['--version']) == 0 and capsys.readouterr().out == f'har-kit {__version__}\n'
    assert main([]) == 2 and 'name a subcommand' in capsys.readouterr().err


def test_python_m_runs_the_console_script():
    "`python -m har_kit.cli` is `har-kit` (a job script calling an environment's python): it used to exit 0 doing nothing."
    r = subprocess.run([sys.executable, '-m', 'har_kit.cli', '--version'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith('har-kit '), (r.returncode, r.stdout, r.stderr)
    r = subprocess.run([sys.executable, '-m', 'har_kit.cli', 'nope'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "unknown subcommand 'nope'" in r.stderr, (r.returncode, r.stderr)


def _cli(*args, env=None, **kw):  # the console script in a process of its own
    return subprocess.run([sys.executable, '-m', 'har_kit.cli', *args], text=True, cwd=ROOT, env={**os.environ, **(env or {})}, **kw)


def test_the_command_in_an_ascii_locale_escapes_what_it_cannot_print():
    "PYTHONIOENCODING=ascii (or an old Latin-1 locale): `har-kit params campar` and `reproduce --help` ended in a UnicodeEncodeError traceback on ρ and ±."
    for args in (('params', 'campar'), ('reproduce', '--help')):
        r = _cli(*args, env={'PYTHONIOENCODING': 'ascii'}, capture_output=True)
        assert r.returncode == 0 and 'Traceback' not in r.stderr and r.stdout.isascii(), (args, r.stderr[-500:])
    assert '\\u03c1' in _cli('params', 'campar', env={'PYTHONIOENCODING': 'ascii'}, capture_output=True).stdout   # ρ, escaped


def test_the_kits_text_files_are_utf8_whatever_the_locale(tmp_path):
    "With PYTHONUTF8=0 under the C locale, reading a notebook (`har-kit run`'s batch copy, its record) was a UnicodeDecodeError traceback that left a half-started run folder, and a table's Δ could not be written."
    code = ('import sys; from pathlib import Path; from har_kit.core import atomic_write; from har_kit.runs import batch_copy; '
            'from har_kit.run_params import notebook_record; '
            f'd = Path({str(tmp_path)!r}); batch_copy({str(ROOT/"nbs"/"41_campar.ipynb")!r}, d/"b.ipynb"); notebook_record(d/"b.ipynb"); '
            'f = atomic_write(d/"t.md"); t = f.__enter__(); t.write("\\u0394 mA \\u00b1 0.1\\n"); f.__exit__(None, None, None); '
            'print(sys.flags.utf8_mode, (d/"t.md").read_bytes())')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, 'PYTHONUTF8': '0', 'LC_ALL': 'C', 'LANG': 'C'})
    assert r.returncode == 0, r.stderr[-800:]
    assert r.stdout.split(' ', 1) == ['0', "b'\\xce\\x94 mA \\xc2\\xb1 0.1\\n'\n"], r.stdout   # not in UTF-8 mode, UTF-8 written


def test_help_and_version_into_a_closed_pipe_end_quietly():
    "`har-kit --version | (exec <&-; ...)`: the top-level help and version were printed outside the BrokenPipeError handling (a traceback)."
    for args in (('--version',), ('--help',)):
        read, write = os.pipe()
        os.close(read)   # the reader is gone before the command writes: every write fails, whatever the timing
        try: r = _cli(*args, stdout=write, stderr=subprocess.PIPE)
        finally: os.close(write)
        assert r.returncode == 0 and r.stderr == '', (args, r.stderr[-500:])


def test_readme_is_rendered_from_index():
    "README.md is nbs/index.ipynb rendered by tools/nb2readme.py (run it after editing the index notebook)."
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'nb2readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_readme_numbers_are_the_codes():
    "Numbers the README types that the code computes (Da-HAR's parameter counts, the paper caches' size): an edit to the code fails here until the prose follows."
    from har_kit import pipeline as P
    from har_kit.dahar import param_table
    readme, t = (ROOT/'README.md').read_text(), param_table()['paper']
    assert f"count, {t['baseline']:.2f}M, matches" in readme and f"({t['dahar']:.2f}M parameters against" in readme, t
    assert f"holds {round(sum(P.cache_gb(*v) for v in P.PAPER_CACHES.values()))} GB in all" in readme
    from har_kit.campar import mca_params
    from har_kit.results import CAMPAR_T1
    m = {k: f'{v / 1e6:.2f}M' for k, v in mca_params().items()}   # MCA at ResNet-50: the public code's (c5 BN only) and Fig. 5's
    assert f"rate ({m['latent 128, c5 BN only']} parameters, as the public code)" in readme, m
    said = ' '.join(str(p.source) for p in CAMPAR_T1.protocol.get('campar', {}).values())
    assert f"({m['latent 128, c5 BN only']} at ResNet-50; a 1x1 conv on c5 too, as Fig. 5 draws it: {m['latent 128, c5 projected']})" in said, said


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT/'README.md').read_text()
    assert 'make main' in readme and 'make test' in readme
    ci = [l.strip() for l in (ROOT/'.ci'/'run').read_text().splitlines() if l.strip() and not l.startswith('#')]
    assert ci[-1] == 'make test', ci


# The wheel itself (notebooks shipped, runtime requirements, a run outside the clone) is tested in test_wheel.py.


def test_top_level_api_is_listed_and_lazy():
    "`dir(har_kit)` lists the lazily imported API (tab completion), and `import har_kit` alone imports neither module."
    out = subprocess.run([sys.executable, '-c', 'import sys, har_kit; print(sorted(dir(har_kit))); '
                          'print("har_kit.predict" in sys.modules, "har_kit.model_file" in sys.modules); print(har_kit.Predictor.__name__)'],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert all(n in out[0] for n in ("'Predictor'", "'load_model'", "'save_model'"))
    assert out[1:] == ['False False', 'Predictor']


def test_nb2readme_help_writes_nothing():
    "`tools/nb2readme.py --help` prints its usage; an unknown argument is refused; neither renders."
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'nb2readme.py'), '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and 'usage' not in r.stderr and '--check' in r.stdout
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'nb2readme.py'), '--chek'], capture_output=True, text=True)
    assert r.returncode == 2 and 'unknown argument' in r.stdout


def test_the_command_shows_warnings_as_its_own_lines(capsys, monkeypatch):
    "A warning raised inside a subcommand reads 'har-kit: warning: ...', not Python's file:line form; the format is restored after."
    import warnings
    from har_kit import cli as C
    def warn(argv): warnings.warn('something to know'); return 0
    monkeypatch.setitem(C.SUBCOMMANDS, 'probe', ('har_kit.cli', 'probe'))
    monkeypatch.setitem(C.CLI_FUNCTIONS, 'probe', '_probe')
    monkeypatch.setattr(C, '_probe', warn, raising=False)
    before = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.simplefilter('always')   # shown as Python shows them (pytest records them otherwise)
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: sys.stderr.write(warnings.formatwarning(m, c, f, n, line))
        assert C.main(['probe']) == 0
    assert 'har-kit: warning: something to know' in capsys.readouterr().err and warnings.formatwarning is before
