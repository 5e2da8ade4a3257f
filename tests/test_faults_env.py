"""Fault catalogue of the environment (issue 30): `HAR_KIT_THREADS`, `HAR_KIT_OUTPUTS` and `HAR_KIT_DATA` set to
what cannot serve. Each is a `KitError` naming the variable and what to do, raised before any work (no kernel, no file).
Nothing here starts a kernel or a process."""
import os
from pathlib import Path

import pytest

from har_kit import runs, synth
from har_kit.core import KitError, data_root, kit_threads, max_threads, outputs_root



@pytest.mark.parametrize('value', ['0', '-3', '99999', 'abc', '2.5', '1e3'])
def test_thread_count_out_of_range_is_refused_naming_the_variable(monkeypatch, tmp_path, value):
    "HAR_KIT_THREADS=99999 started a kernel that died of memory; 0/-3/abc must not reach torch either."
    monkeypatch.setenv('HAR_KIT_THREADS', value)
    with pytest.raises(KitError, match=rf"\$HAR_KIT_THREADS='{value}': .* whole number from 1 to {max_threads()}"):
        runs.kernel_env(tmp_path/'run')
    assert not (tmp_path/'run').exists()


def test_thread_count_in_range_and_the_cap():
    assert kit_threads(1) == 1 and kit_threads(max_threads()) == max_threads() >= (os.cpu_count() or 1)
    with pytest.raises(KitError, match=r'threads \(--threads\)=99999'): kit_threads(99999)
    with pytest.raises(KitError, match=r'threads \(--threads\)=True'): kit_threads(True)


@pytest.mark.parametrize('var', ['HAR_KIT_OUTPUTS', 'HAR_KIT_DATA'])
@pytest.mark.parametrize('below', [False, True])
def test_location_that_is_a_file_is_refused_naming_the_variable(monkeypatch, tmp_path, var, below):
    f = tmp_path/'a-file'; f.write_text('x')
    monkeypatch.setenv(var, str(f/'sub' if below else f))
    root = outputs_root if var == 'HAR_KIT_OUTPUTS' else data_root
    with pytest.raises(KitError, match=rf'\${var}=.*: {f} is a file, not a folder; point \${var} at a folder'): root()
    assert f.read_text() == 'x'


def test_synth_into_a_data_folder_that_is_a_file_is_a_clear_error(monkeypatch, tmp_path, capsys):
    "`HAR_KIT_DATA=<file> har-kit synth wider` was a NotADirectoryError traceback."
    f = tmp_path/'a-file'; f.write_text('x')
    monkeypatch.setenv('HAR_KIT_DATA', str(f))
    assert synth.cli(['wider', '--profile', 'tiny']) != 0
    assert f"$HAR_KIT_DATA='{f}': {f} is a file" in capsys.readouterr().err


def test_run_with_an_outputs_folder_that_is_a_file_stops_before_the_kernel(monkeypatch, tmp_path, capsys):
    f = tmp_path/'a-file'; f.write_text('x')
    monkeypatch.setenv('HAR_KIT_OUTPUTS', str(f))
    monkeypatch.setattr(runs, '_execute', lambda *a, **k: pytest.fail('the kernel must not start'))
    assert runs.cli(['matfile']) == 1
    assert f"$HAR_KIT_OUTPUTS='{f}': {f} is a file" in capsys.readouterr().err


@pytest.mark.parametrize('var', ['HAR_KIT_OUTPUTS', 'HAR_KIT_DATA'])
def test_read_only_location_is_refused_for_writing_only(monkeypatch, tmp_path, var, read_only):
    ro = tmp_path/'ro'; ro.mkdir(); read_only(ro)   # skipped as root before (chmod does not bite): run everywhere now
    monkeypatch.setenv(var, str(ro/'kit'))
    root = outputs_root if var == 'HAR_KIT_OUTPUTS' else data_root
    assert root() == ro/'kit'                                   # reading (status, cached sets) is fine
    with pytest.raises(KitError, match=rf'\${var}=.*: {ro} cannot be written \(a read-only file system'): root(writable=True)


def test_default_location_names_the_variable_to_set(monkeypatch, tmp_path):
    "Without the variable, a default that cannot serve says which variable chooses another folder."
    monkeypatch.delenv('HAR_KIT_DATA', raising=False)
    monkeypatch.setattr('har_kit.core.repo_root', lambda: None)
    monkeypatch.chdir(tmp_path); (tmp_path/'har-kit-data').write_text('x')
    with pytest.raises(KitError, match=r'\(the default; set \$HAR_KIT_DATA to choose another folder\): .* is a file'): data_root()
    assert Path(tmp_path/'har-kit-data').read_text() == 'x'


def test_commands_that_write_refuse_a_read_only_location_before_any_work(monkeypatch, tmp_path, read_only):
    "run (no --out), synth generation, the mask cache and the decoded cache name the variable instead of an OSError."
    from types import SimpleNamespace
    from har_kit import masks, pipeline
    ro = tmp_path/'ro'; ro.mkdir()
    read_only(ro)
    monkeypatch.setenv('HAR_KIT_OUTPUTS', str(ro)); monkeypatch.setenv('HAR_KIT_DATA', str(ro)); monkeypatch.delenv('HAR_KIT_CACHE', raising=False)
    monkeypatch.setattr(runs, '_execute', lambda *a, **k: pytest.fail('the kernel must not start'))
    with pytest.raises(KitError, match=r'\$HAR_KIT_OUTPUTS=.* cannot be written'): runs.run_notebook('matfile', {}, None, progress=False)
    with pytest.raises(KitError, match=r'\$HAR_KIT_DATA=.* cannot be written'): synth.ensure_synthetic('rap', 'tiny', seed=7)
    with pytest.raises(KitError, match=r'\$HAR_KIT_DATA=.* cannot be written'):
        masks.mask_cache_dir(SimpleNamespace(name='rap', root=tmp_path), SimpleNamespace(key='box'))
    img = tmp_path/'x.png'; img.write_bytes(b'')
    with pytest.raises(KitError, match=r'\$HAR_KIT_CACHE.* cannot be written'): pipeline.decoded_cache([img], [None], (8, 8))
    assert list(ro.iterdir()) == []   # nothing written


def test_a_run_directory_that_cannot_serve_is_refused_before_anything_is_made_in_it(monkeypatch, tmp_path, read_only):
    "A read-only --out (a traceback from its lock file before), a folder of other files (refused, but a .lock was left in "
    "it), and a notebook file that is JSON but no notebook: one KitError each, no kernel, nothing written."
    monkeypatch.setattr(runs, '_execute', lambda *a, **k: pytest.fail('the kernel must not start'))
    ro = tmp_path/'ro'; ro.mkdir()
    read_only(ro)
    with pytest.raises(KitError, match=r'out_dir \(--out\) .*/ro/run: .*/ro cannot be written'):
        runs.run_notebook('matfile', {}, ro/'run', progress=False)
    mine = tmp_path/'mine'; mine.mkdir(); (mine/'notes.txt').write_text('x')
    with pytest.raises(KitError, match='mine is not empty and is not a run directory'): runs.run_notebook('matfile', {}, mine, progress=False)
    assert list(ro.iterdir()) == [] and [p.name for p in mine.iterdir()] == ['notes.txt']
    for text in ('{"cells": 5}', '[]', '{"cells": [1]}', '{"cells": [{"metadata": []}]}'):
        nb = tmp_path/'odd.ipynb'; nb.write_text(text)
        with pytest.raises(KitError, match='odd.ipynb: not a readable notebook'): runs.run_notebook(nb, {}, tmp_path/'r', progress=False)


def test_a_kit_error_a_subcommand_lets_through_is_one_line(monkeypatch, tmp_path, capsys):
    "`HAR_KIT_OUTPUTS=<file> har-kit status` printed a KitError traceback: the console script reports it and exits 2."
    from har_kit import cli
    f = tmp_path/'a-file'; f.write_text('x')
    monkeypatch.setenv('HAR_KIT_OUTPUTS', str(f))
    assert cli.main(['status']) == 2
    err = capsys.readouterr().err
    assert err.startswith('har-kit status: ') and 'is a file' in err and 'Traceback' not in err
