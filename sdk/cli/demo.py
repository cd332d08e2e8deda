"""``medge demo``: the whole chain on this machine with embedded defaults.

Phantom chest-CT studies → the reference model compiled (quantized where the
profile says so), gated and signed for the detected device profile → a local
Mosquitto and the dashboard (ingest, SQLite store, web UI) → the appliance service verifies
the package and checks its golden samples → a simulated scanner C-STOREs every
slice → findings go over MQTT into the dashboard's store, acknowledged end to
end → a findings table scored against the phantoms' ground truth.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table

from sdk.cli.compile import RichListener, compile_summary
from sdk.cli.console import console, progress_bars

DEMO_KEY_NAME = "demo-signing"
DEMO_USER = "demo"
DEMO_PASSWORD = "medge-demo-only"  # loopback demo; a site creates its users with `medge dashboard create-user`


@dataclass
class _SliceResult:
    study: str
    instance: int
    truth: bool
    score: float
    positive: bool
    where: str
    latency_ms: float


def demo(
    once: bool = typer.Option(False, "--once", help="Exit after the summary (for scripts); exit code 0."),
    out: Path = typer.Option(Path("build/demo"), help="Where studies, keys and the package go."),
    studies: int = typer.Option(6, min=1, max=100, help="How many phantom studies to make."),
    slices: int = typer.Option(24, min=4, max=256, help="Slices per phantom series."),
    seed: int = typer.Option(2026, help="Seed of the phantom studies."),
    profile: str | None = typer.Option(None, help="Device profile id; detected from this host when omitted."),
    calib_studies: int = typer.Option(10, min=2, max=100, help="Phantom studies to calibrate the compile on."),
    dashboard_port: int = typer.Option(8080, min=0, max=65535, help="The dashboard's port on 127.0.0.1 (0: any)."),
) -> None:
    """Run the medge demo: phantoms → signed package for this host → appliance → MQTT → dashboard store.

    Everything runs on loopback: a local Mosquitto (anonymous, demo only), the
    dashboard (ingest, SQLite store, web UI with a demo login), the appliance service and a
    simulated scanner. Without --once it keeps serving until Ctrl-C.
    """

    from dashboard.audit import CLI_ACTOR
    from dashboard.auth import create_user
    from dashboard.errors import AccountError
    from dashboard.settings import DashboardConfig
    from dashboard.web import DashboardService
    from device_profiles import detect_host, get_profile, list_profiles, match_profile
    from firmware_integration.broker import BrokerFolder, add_dashboard, add_device, write_broker_config
    from quantization.calibration import labels_from_phantom_truth
    from quantization.compile import CompileOptions, compile_package
    from runtime.appliance import Appliance
    from sdk.appliance_config import ApplianceConfig
    from sdk.messages import Finding
    from sdk.model_config import load_model_config
    from sdk.reference_model import config_path, onnx_path
    from sdk.signing import generate_keypair, load_private_key
    from sdk.testing import PhantomSpec, generate_studies
    from sdk.testing.mosquitto import MosquittoBroker, free_port
    from sdk.trust import TrustStore

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)

    # 1. Which board is this?
    if profile is None:
        detection = match_profile(detect_host(), list_profiles())
        chosen = get_profile(detection.profile_id)
        console.print(f"[bold]profile[/]   {chosen.id}  [dim]({'; '.join(detection.reasons)})[/]")
    else:
        chosen = get_profile(profile)
        console.print(f"[bold]profile[/]   {chosen.id}  [dim](given)[/]")

    # 2. Phantom studies with known nodules.
    study_dir = out / "studies"
    spec = PhantomSpec(slices=slices)
    with console.status(f"writing {studies} phantom chest-CT studies of {slices} slices"):
        truths = generate_studies(study_dir, studies, spec, seed=seed)
    console.print(f"[bold]studies[/]   {studies} phantom studies in {study_dir}")

    # 3. A demo signing key, trusted on this machine.
    key_dir = out / "keys"
    private_path = key_dir / f"{DEMO_KEY_NAME}.key"
    if not private_path.exists():
        generate_keypair(key_dir, DEMO_KEY_NAME)
    trust = TrustStore.load()
    key_id = trust.add(key_dir / f"{DEMO_KEY_NAME}.pub")
    console.print(f"[bold]key[/]       {key_id} (demo key, trusted in {trust.folder})")

    # 4. Compile the reference model for the profile, calibrated and gated on the device maker's own studies.
    config = load_model_config(config_path())
    calib_dir = out / "calibration"
    with console.status(f"writing {calib_studies} calibration studies (the device maker's own data)"):
        generate_studies(calib_dir, calib_studies, PhantomSpec(slices=32), seed=seed + 1)
    package_path = out / f"{config.name}-{config.version}-{chosen.id}.medge"
    progress = progress_bars()
    listener = RichListener(progress)
    with progress:
        result = compile_package(
            onnx_path(),
            config,
            chosen,
            calib_dir,
            load_private_key(private_path),
            package_path,
            CompileOptions(labels=labels_from_phantom_truth(calib_dir) or None),
            listener=listener,
        )
        listener.close()
    console.print(compile_summary(result))

    # 5. The site broker (the shipped Mosquitto config, adapted for loopback: no TLS, passwords and ACLs kept)
    #    and the dashboard's ingest (its store survives between demo runs).
    broker_dir = out / "broker"
    shutil.rmtree(broker_dir, ignore_errors=True)
    broker_settings = write_broker_config(
        broker_dir / "site",
        tls=None,
        port=free_port(),
        bind_address="127.0.0.1",
        run_as=None,
        pid_file=broker_dir / "mosquitto.pid",
    )
    device_secrets = add_device(broker_dir / "site", "demo-site", "demo-ct").write(broker_dir / "demo-ct")
    dashboard_secrets = add_dashboard(broker_dir / "site", "demo-dashboard").write(broker_dir / "demo-dashboard")
    broker = MosquittoBroker(
        broker_dir / "run",
        port=broker_settings.port,
        extra_config=BrokerFolder(broker_dir / "site").medge_config.read_text(),
    ).start()
    dashboard_settings = DashboardConfig(
        data_dir=out / "dashboard",
        demo=True,
        mqtt={
            "host": "127.0.0.1",
            "port": broker.port,
            "client_id": "demo-dashboard",
            "username": "demo-dashboard",
            "password_file": _password_file(dashboard_secrets),
        },
        web={"host": "127.0.0.1", "port": dashboard_port if _port_free(dashboard_port) else 0},
    )
    service = DashboardService(dashboard_settings).start()
    assert service.ingest is not None
    ingest = service.ingest
    if not ingest.wait_ready(30):
        service.stop()
        broker.stop()
        raise typer.BadParameter("the dashboard's ingest could not subscribe to the local broker")
    with contextlib.suppress(AccountError):  # made by an earlier demo run: the store is kept
        create_user(service.store, DEMO_USER, "admin", DEMO_PASSWORD, actor=CLI_ACTOR)
    console.print(
        f"[bold]broker[/]    mqtt://127.0.0.1:{broker.port} (the shipped config on loopback: passwords, ACLs)"
    )
    console.print(
        f"[bold]dashboard[/] [link={service.url}]{service.url}[/link]  login [bold]{DEMO_USER}[/] / "
        f"[bold]{DEMO_PASSWORD}[/] (demo only)  store {dashboard_settings.store_url}"
    )

    # 6. The appliance service (verify, load, golden samples), fed by a simulated scanner over C-STORE.
    appliance_dir = out / "appliance"
    shutil.rmtree(appliance_dir, ignore_errors=True)  # a fresh appliance: the same instances would be duplicates
    (appliance_dir / "packages").mkdir(parents=True)
    shutil.copy2(package_path, appliance_dir / "packages" / package_path.name)
    settings = ApplianceConfig(
        appliance={
            "site": "demo-site",
            "device": "demo-ct",
            "profile": chosen.id,
            "demo": True,
            "data_dir": appliance_dir / "data",
        },
        dicom={"ae_title": "MEDGE", "host": "127.0.0.1"},
        mqtt={
            "host": "127.0.0.1",
            "port": broker.port,
            "username": "demo-site/demo-ct",
            "password_file": _password_file(device_secrets),
        },
        packages={"dir": appliance_dir / "packages"},
    )
    appliance = Appliance(settings, trusted=TrustStore.load(), dicom_port=0)
    appliance.start()
    try:
        live = appliance.packages.live.get(config.name)
        if live is None:
            reasons = "; ".join(r.reason for r in appliance.packages.refused) or "no package found"
            console.print(f"[bold red]the package did not go live:[/] {reasons}")
            raise typer.Exit(0 if once else 1)
        placement, golden = live.placement, live.golden
        assert appliance.scp is not None and appliance.health is not None
        console.print(
            f"[bold]appliance[/] DICOM MEDGE@127.0.0.1:{appliance.scp.port}, "
            f"health http://127.0.0.1:{appliance.health.port}/readyz"
        )
        console.print(
            f"[bold]engine[/]    {placement.engine} on {placement.device}"
            + (f" [yellow](degraded: {placement.reason})[/]" if placement.degraded else "")
            + f"; golden samples {golden.passed}/{golden.total} within {golden.tolerance:g}"
        )
        files = {
            str(s.sop_instance_uid): (truth, s) for truth in truths for series in truth.series for s in series.slices
        }
        with progress_bars() as progress:
            task = progress.add_task("scanner → appliance (C-STORE)", total=len(files))
            sent = _scanner(appliance.scp.port, study_dir, truths, lambda: progress.advance(task))
            task = progress.add_task("findings in the outbox", total=sent)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                counts = appliance.queue.counts()
                done = sum(counts.get(state, 0) for state in ("analysed", "reported", "quarantined", "failed"))
                progress.update(task, completed=done)
                if done >= sent:
                    break
                time.sleep(0.05)
            made = len(appliance.queue.findings())
            task = progress.add_task("acknowledged by the dashboard's store", total=made)
            while time.monotonic() < deadline:
                progress.update(task, completed=made - appliance.queue.depth())
                if appliance.queue.depth() == 0:
                    break
                time.sleep(0.05)
        stats = ingest.stats()
        console.print(
            f"[bold]dashboard[/] {stats.findings_stored} new findings committed over MQTT"
            f" ({stats.duplicates} re-sent and de-duplicated, {stats.dead_letters} dead letters);"
            f" outbox unacknowledged: {appliance.queue.depth()}"
        )
        results: list[_SliceResult] = []
        for entry in appliance.queue.findings():
            finding = Finding.model_validate_json(entry.payload)
            truth, slice_truth = files[str(entry.sop_instance_uid)]
            where = ""
            if finding.positive and finding.location and finding.location.patient_mm:
                x, y, z = finding.location.patient_mm
                where = f"({x:.0f}, {y:.0f}, {z:.0f})"
            results.append(
                _SliceResult(
                    truth.patient_id,
                    slice_truth.instance_number,
                    slice_truth.has_nodule,
                    finding.score,
                    finding.positive,
                    where,
                    finding.latency_ms.get("total", 0.0),
                )
            )
        results.sort(key=lambda r: (r.study, r.instance))
        _print_findings(results, config.thresholds[config.labels[0]])
        console.print(f"[dim]demo finished in {time.monotonic() - started:.1f} s[/]")
        if not once:
            console.print("[bold]serving[/]   send DICOM to the appliance, watch the dashboard; Ctrl-C stops")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                console.print("stopping")
    finally:
        appliance.stop()
        service.stop()
        broker.stop()


def _port_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 now (else the demo takes any free one)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _password_file(written: list[Path]) -> Path:
    """The password file of a credential bundle ``Credentials.write`` wrote."""
    return next(path for path in written if path.name == "password")


def _scanner(port: int, study_dir: Path, truths: list, on_sent: Callable[[], None]) -> int:
    """A simulated CT scanner: one association per study, every slice C-STOREd (TCP_NODELAY)."""
    from pydicom.uid import CTImageStorage
    from pynetdicom import AE

    from runtime.ingest.sockets import nodelay_evt_handlers

    ae = AE(ae_title="DEMO_CT")
    ae.add_requested_context(CTImageStorage)
    sent = 0
    for truth in truths:
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers())
        if not assoc.is_established:
            raise RuntimeError("the appliance refused the scanner's association")
        for series in truth.series:
            for slice_truth in series.slices:
                status = assoc.send_c_store(study_dir / str(truth.folder) / str(slice_truth.file))
                if status and status.Status == 0x0000:
                    sent += 1
                on_sent()
        assoc.release()
    return sent


def _print_findings(results: list[_SliceResult], threshold: float) -> None:
    table = Table(title=f"findings per study (nodule probability ≥ {threshold:g})")
    for column in (
        "patient",
        "slices",
        "with nodule",
        "found",
        "false +",
        "missed",
        "top score",
        "top slice: where (mm)",
    ):
        table.add_column(
            column, justify="left" if column in {"patient", "top slice: where (mm)"} else "right", no_wrap=True
        )
    by_study: dict[str, list[_SliceResult]] = {}
    for item in results:
        by_study.setdefault(item.study, []).append(item)
    for study, items in by_study.items():
        top = max(items, key=lambda r: r.score)
        found = sum(r.positive and r.truth for r in items)
        false_pos = sum(r.positive and not r.truth for r in items)
        missed = sum(r.truth and not r.positive for r in items)
        table.add_row(
            study,
            str(len(items)),
            str(sum(r.truth for r in items)),
            f"[green]{found}[/]",
            f"[yellow]{false_pos}[/]" if false_pos else "0",
            f"[red]{missed}[/]" if missed else "0",
            f"[bold]{top.score:.3f}[/]" if top.positive else f"{top.score:.3f}",
            f"#{top.instance} {top.where}" if top.positive else "",
        )
    console.print(table)
    tp = sum(r.positive and r.truth for r in results)
    fn = sum(not r.positive and r.truth for r in results)
    tn = sum(not r.positive and not r.truth for r in results)
    fp = sum(r.positive and not r.truth for r in results)
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    latencies = sorted(r.latency_ms for r in results)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    console.print(
        f"[bold]summary[/]   {len(results)} slices, {tp + fp} flagged; per-slice sensitivity {sensitivity:.1%}, "
        f"specificity {specificity:.1%} against the phantoms' ground truth; "
        f"latency p50 {statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms per slice "
        "(spooled → finding, queueing included)"
    )
