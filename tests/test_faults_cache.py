"A decoded-cache build killed outright (SIGTERM, SIGKILL: no cleanup runs) leaves no decoding process behind holding its arrays' disk space."
import os, signal, subprocess, sys

import psutil

from har_kit.data import read_pa100k, tiny_fixture

BUILD = '''
import sys, time
import har_kit.pipeline as P
def waits(job): time.sleep(3600)   # __main__.waits: the forked decoding processes have it too
P._decode_chunk = waits            # the build waits to be killed
paths = sys.argv[1:]
P.decoded_cache(paths, [None] * len(paths), (32, 24), name='killed', workers=2)
'''


def test_a_killed_build_leaves_no_decoding_process(tmp_path, sig=signal.SIGKILL):   # SIGTERM's default action is the same
    ds = read_pa100k(tiny_fixture('pa100k', tmp_path/'pa', n=12))
    env = {**os.environ, 'HAR_KIT_CACHE': str(tmp_path/'cache'), 'OMP_NUM_THREADS': '1'}
    p = subprocess.Popen([sys.executable, '-c', BUILD, *[str(s.image) for s in ds.samples]], env=env, stderr=subprocess.DEVNULL)
    kids = []
    try:
        build = psutil.Process(p.pid)
        while p.poll() is None and len(kids) < 2: kids = build.children(); psutil.wait_procs([build], timeout=0.1)
        assert len(kids) >= 2, f'the build ended (rc {p.returncode}) before its decoding processes started'
        p.send_signal(sig); p.wait()
        _, alive = psutil.wait_procs(kids, timeout=120)   # they exit within a second; the limit only bounds a failure
        assert alive == [], f'decoding processes left running after the build was killed by {sig.name}: {alive}'
    finally:
        for k in kids:
            try: k.kill()
            except psutil.NoSuchProcess: pass
        if p.poll() is None: p.kill()


def test_a_decoding_process_whose_build_died_before_it_started_leaves_at_once():
    "The build's pid comes from the build: a process forked just before the build was killed, and scheduled only after, no longer takes its new parent (the reaper) for the build and waits forever."
    import har_kit.pipeline as P
    pid = os.fork()
    if pid == 0:   # the decoding process, told a build pid that is not its parent
        try: P._decoder_init((), parent=-1); os._exit(0)   # returned: it would have stayed
        except BaseException: os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
