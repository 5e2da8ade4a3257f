"""Fault catalogue of the launcher and status side (issue 30): each test tries one fault and states the clear outcome."""
import os

import pytest

from har_kit.core import KitError
from har_kit.launch import _read_launcher_config, check_launcher_options, job_queued, read_status_runs, status_cli


@pytest.mark.parametrize('content, message', [
    ('7', 'expected key: value lines, got int'),
    ('[1, 2]', 'expected key: value lines, got list'),
    ('time: [1', 'not YAML/JSON'),
    (b'\xff\xfe\x00binary', 'not YAML/JSON'),
    ('time: abc', "time='abc': expected whole minutes"),
    ('mem_gb: [1]', 'mem_gb=\\[1\\]: expected a positive number'),
    ('cluster: bogus', "cluster='bogus': expected 'slurm' or 'local'"),
    ('gpus: -1', 'gpus=-1: expected a whole number of GPUs'),
    ('partition: 1.0e+26', 'partition=1e\\+26: expected a name'),
    ('colour: red', "unknown key\\(s\\) \\['colour'\\]"),
])
def test_launcher_config_faults_are_one_line(tmp_path, content, message):
    p = tmp_path/'launcher.yaml'
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(KitError, match=message): _read_launcher_config(p)


def test_launcher_config_folder_and_slurm_without_sbatch(tmp_path, monkeypatch):
    with pytest.raises(KitError, match='a folder, not a file'): _read_launcher_config(tmp_path)
    monkeypatch.setenv('PATH', str(tmp_path))
    with pytest.raises(KitError, match="cluster='slurm' but sbatch is not on PATH"): check_launcher_options({'cluster': 'slurm'}, 'x')
    assert check_launcher_options({'cluster': 'local', 'time': 60, 'gpus': 0, 'mem_gb': 2.5}, 'x')['time'] == 60


@pytest.mark.parametrize('content', ['[1, 2]', '{"runs": 3}', '{"runs": [{"name": "x"}]}', b'\x00\xff', 'not json'])
def test_status_json_of_the_wrong_shape_is_one_line(tmp_path, capsys, content):
    p = tmp_path/'quick'/'status.json'; p.parent.mkdir()
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(KitError, match='status.json'): read_status_runs(p)
    assert status_cli(['--out', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('har-kit status:') and 'Traceback' not in err and len(err.strip().splitlines()) == 1


def test_status_json_that_is_a_folder(tmp_path, capsys):
    (tmp_path/'quick'/'status.json').mkdir(parents=True)
    assert status_cli(['--out', str(tmp_path)]) == 2
    assert 'a folder, not a status written by har-kit reproduce' in capsys.readouterr().err


def test_a_reused_pid_is_not_a_queued_job():
    import psutil
    me = psutil.Process(os.getpid()).create_time()
    assert job_queued({'cluster': 'local', 'job_id': str(os.getpid()), 'started': me})
    assert not job_queued({'cluster': 'local', 'job_id': str(os.getpid()), 'started': me - 1000})   # another process had it
    assert not job_queued({'cluster': 'local', 'job_id': str(os.getpid()), 'started': -1.0})        # ended before recorded
