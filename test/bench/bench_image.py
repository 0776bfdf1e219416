"""``make bench``: the appliance image and VM appliances — the image's build time and size,
one appliance VM's boot-to-configured time under TCG (and KVM when a guest runs with it
here), and the QEMU lab's time from ``astara-lab up --driver qemu`` to all rows green.

* Build: ``scripts/build-image`` from scratch (``astara_lab.image.ensure(force=True)``;
  ``--no-build`` reuses ``out/`` and reports its size only). Size: the qcow2 file, the data
  it holds (``qemu-img map``), the kernel and initramfs, the number of Debian packages.
* VM: the orchestrator's QEMU driver boots the image with router-basic's NICs
  (astara_lab/vm.py); boot-to-API is driver create → first 200 on the liveness probe,
  boot-to-configured adds the PUT of router-basic. ``--vm-runs`` runs per accelerator.
* Lab: a whole ``astara-lab up --driver qemu`` (image current: not rebuilt) and its
  self-check until every row passes, then ``down``.

The machine is shared: the load average at each step goes with the numbers. Results go
to this script's section of BENCHMARKS.md (markdown_sections.py).

    .venv/bin/python test/bench/bench_image.py [--no-build] [--vm-runs 2] [--no-lab]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from astara_lab import image as images  # noqa: E402
from astara_lab.vm import VmAppliance  # noqa: E402
from astara_netns import Lab  # noqa: E402
from bench_common import (add_output_option, machine_facts, machine_line,  # noqa: E402
                          require_root)
from bench_lab import green_lab  # noqa: E402
from bench_report import Summary  # noqa: E402
from markdown_sections import write_section  # noqa: E402 (this directory)
from orchestrator_lite.drivers.qemu import kvm_runs_a_guest  # noqa: E402

BOOT_TIMEOUT = 1800
LAB_PATIENCE = 180


def load():
    return os.getloadavg()[0]


def image_size():
    files = images.outputs()
    mapping = json.loads(subprocess.run(
        ["qemu-img", "map", "--output=json", str(files["qcow2"])], capture_output=True,
        text=True, check=True).stdout)
    manifest = files["manifests"] / f"dib-manifest-dpkg-{images.image_name()}"
    return {"qcow2": files["qcow2"].stat().st_size,
            "data": sum(e["length"] for e in mapping if e["data"]),
            "vmlinuz": files["vmlinuz"].stat().st_size,
            "initrd": files["initrd"].stat().st_size,
            "packages": len(json.loads(manifest.read_text())["packages"])}


def boot_one(accel):
    lab = Lab()
    vm = None
    try:
        vm = VmAppliance(lab, accel=accel)
        to_api = vm.boot(BOOT_TIMEOUT)
        put, response = vm.configure()
        if response.status != 200:
            raise RuntimeError(f"router-basic refused: {response.text}")
        return {"boot_to_api": to_api, "put": put, "boot_to_configured": to_api + put,
                "load": load()}
    finally:
        if vm is not None:
            vm.close()
        lab.close()


def lab_run():
    state, rows, green, _ = green_lab(LAB_PATIENCE, driver="qemu")
    boot = state["timings"]["demo-router_boot_to_configured"]
    return {"green": green, "router": boot, "rows": len(rows), "load": load()}


def span(values, unit="s"):
    if len(values) == 1:
        return f"{values[0]:.1f} {unit}"
    summary = Summary.of(values)
    return f"{summary.median:.1f} {unit} (min {summary.low:.1f}, max {summary.high:.1f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="reuse out/ (no build time)")
    parser.add_argument("--vm-runs", type=int, default=2)
    parser.add_argument("--no-lab", action="store_true")
    add_output_option(parser)
    args = parser.parse_args(argv)
    require_root()
    facts = machine_facts()
    rows = []
    if args.no_build:
        built = None
        if images.status() == "missing":
            print("no image in out/: run without --no-build", file=sys.stderr)
            return 1
    else:
        print("  image: building from scratch", flush=True)
        _, built = images.ensure(force=True, progress=lambda line: None)
        rows.append(("image build (`scripts/build-image`, from scratch)",
                     f"{built:.0f} s", f"{load():.1f}"))
        print(f"  image: built in {built:.0f} s", flush=True)
    size = image_size()
    mib = 2 ** 20
    rows.append(("qcow2 (compressed) / data it holds",
                 f"{size['qcow2'] / mib:.0f} MiB / {size['data'] / mib:.0f} MiB", ""))
    rows.append(("kernel + initramfs (direct boot)",
                 f"{size['vmlinuz'] / mib:.1f} + {size['initrd'] / mib:.1f} MiB", ""))
    rows.append(("Debian packages in the image", str(size["packages"]), ""))

    kernel = images.outputs()["vmlinuz"]
    kvm_ok, kvm_detail = kvm_runs_a_guest("qemu-system-x86_64", kernel)
    for accel in ("tcg", "kvm"):
        if accel == "kvm" and not kvm_ok:
            rows.append(("VM boot under KVM", f"not measured: {kvm_detail}", ""))
            continue
        runs = []
        for n in range(args.vm_runs):
            runs.append(boot_one(accel))
            print(f"  VM ({accel}) {n + 1}/{args.vm_runs}: boot to API "
                  f"{runs[-1]['boot_to_api']:.1f} s, configured after "
                  f"{runs[-1]['boot_to_configured']:.1f} s", flush=True)
        loads = ", ".join(f"{r['load']:.1f}" for r in runs)
        rows.append((f"VM under {accel.upper()}: create → agent answers",
                     span([r["boot_to_api"] for r in runs]), loads))
        rows.append((f"VM under {accel.upper()}: router-basic PUT",
                     span([r["put"] for r in runs]), loads))
        rows.append((f"VM under {accel.upper()}: create → configured",
                     span([r["boot_to_configured"] for r in runs]), loads))
    if not args.no_lab:
        result = lab_run()
        print(f"  QEMU lab: all {result['rows']} rows green after {result['green']:.0f} s",
              flush=True)
        rows.append(("QEMU lab: its router VM (demo-router), create → configured",
                     f"{result['router']:.1f} s", f"{result['load']:.1f}"))
        rows.append((f"QEMU lab: `astara-lab up --driver qemu` → all {result['rows']} "
                     "rows green", f"{result['green']:.1f} s", f"{result['load']:.1f}"))

    lines = [
        "## Image and VM appliances", "",
        f"`make bench` {machine_line(facts)} (the cores shared with other jobs: the load "
        "average at each step is given). The image is `out/astara.qcow2` "
        "(diskimage-builder, Debian bookworm, lean: see the astara element's allow-list); "
        "VMs are booted by the orchestrator's QEMU driver: 1 vCPU, 1 GiB, direct kernel "
        "boot, overlay on a copy of the image, router-basic's three NICs as taps in a lab "
        "namespace; configured = router-basic.json applied. KVM is used only when a guest "
        "boots with it.", "",
        "| what | time / size | load average |",
        "|---|---|---|"]
    lines += [f"| {what} | {value} | {avg} |" for what, value, avg in rows]
    text = "\n".join(lines) + "\n"
    write_section(args.output, "image", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
