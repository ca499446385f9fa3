"""What every benchmark result records about the machine it ran on."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from dalaba_ops.broker import MosquittoProcess


def machine_facts() -> dict[str, str]:
    model, mem_kb = "unknown", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    out = subprocess.run(
        [MosquittoProcess.executable(), "-h"], capture_output=True, text=True, check=False
    )
    mosq = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "?"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "mosquitto": mosq.strip(),
    }
