"GPU check in its CPU mode: every step runs at tiny sizes, the report is complete, the notebook runs it plans still fit the notebooks."
import importlib.util, json
from pathlib import Path

import torch

TOOL = Path(__file__).resolve().parents[1]/'tools'/'gpu_check.py'
spec = importlib.util.spec_from_file_location('gpu_check', TOOL)
gpu_check = importlib.util.module_from_spec(spec); spec.loader.exec_module(gpu_check)


def test_cpu_tiny_writes_a_complete_report(tmp_path):
    threads = torch.get_num_threads()
    try: rc = gpu_check.main(['--cpu-tiny', '--out', str(tmp_path), '--wheels', str(tmp_path/'no-wheels')])
    finally: torch.set_num_threads(threads)
    rep = json.loads((tmp_path/'report.json').read_text())
    assert rc == 0, {k: v for k, v in rep['steps'].items() if 'error' in v}
    assert set(rep['steps']) == {'environment', 'models', 'latency', 'resize', 'data_pipeline', 'maskrcnn', 'notebooks', 'projection'}
    assert len(rep['resize']) == 4 and all(v['resize_bilinear_ms'] > 0 for v in rep['resize'].values())
    assert len(rep['models']) == 5 * 2 * 2 and all(v['train_images_per_s'] > 0 for v in rep['models'].values())
    assert {'dahar/baseline@1', 'campar/plain@2', 'campar_fusion/plain@1'} <= set(rep['latency'])
    assert rep['data_pipeline']['campar']['input_size'] == [3, 256, 192] and rep['maskrcnn']['images_per_s'] > 0
    assert rep['projection']['total_hours_fp32'] > 0 and rep['projection']['runs']
    # the notebook runs the GPU mode would make: every parameter is one the section notebook has
    assert set(rep['notebooks']) == {'masks', 'dahar', 'campar', 'cfar'}
    assert all(not v['dropped'] for v in rep['notebooks'].values()), {k: v['dropped'] for k, v in rep['notebooks'].items()}
    md = (tmp_path/'report.md').read_text()
    assert '| dahar | bf16 | channels_last |' in md and 'Paper anchor: 1.079' in md and 'Projected paper profile' in md


def test_wheel_list_is_pinned_and_unique():
    names = [w.split('==')[0] for w in gpu_check.DEVICE_WHEELS]
    assert all('==' in w for w in gpu_check.DEVICE_WHEELS) and len(names) == len(set(names))
    assert {'papermill', 'nbdev', 'fastcore', 'implicit', 'ipykernel'} <= set(names)
