"""``geobimors.train(...)`` keeps working after the ``geobimors.train`` package is imported."""

import subprocess
import sys


def test_train_stays_callable_after_its_package_is_imported(tmp_path):
    code = (
        "import geobimors\n"
        "import geobimors.train.data\n"  # binds the package to geobimors.train
        "assert callable(geobimors.train), type(geobimors.train)\n"
        "try:\n"
        "    geobimors.train('missing-folder', 'h.safetensors')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    # the call reached the training API, which refuses the missing data with its own one-line error
    assert done.stdout.startswith("InputError"), done.stdout
