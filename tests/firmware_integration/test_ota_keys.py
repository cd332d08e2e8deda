"""Key rotation over the air, on the running appliance (firmware_integration/ota/keys.py, agent.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_integration.ota import OtaError
from sdk.fleet_contracts import KeyRotation, OtaStep, endorse_keys
from sdk.messages import Command
from sdk.signing import generate_keypair, load_private_key, load_public_key, public_key_pem
from tests.firmware_integration.package_server import (
    MODEL,
    PackageServer,
    compile_version,
    derive,
    live_versions,
    make_site,
    running,
    update_command,
)

TOKEN = "device-token-0123456789abcdef"


def _rotate(rotation: KeyRotation) -> Command:
    return Command(site="st-marys", device="ct-1", command="rotate-keys", args=rotation.model_dump(mode="json"))


def test_keys_rotate_only_on_a_trusted_endorsement_and_never_drop_what_the_live_package_needs(
    reference_packages, tmp_path: Path
) -> None:
    old_key, old_pair = reference_packages.key, reference_packages.pair
    new_pair = generate_keypair(tmp_path / "new-key")
    new_key = load_private_key(new_pair.private_path)
    stranger = load_private_key(generate_keypair(tmp_path / "stranger").private_path)
    new_pem = public_key_pem(load_public_key(new_pair.public_path)).decode()
    v1_0 = compile_version(reference_packages.calibration, old_key, tmp_path / "chest-ct-nodule-1.0.0.medge", "1.0.0")
    signed_by_new = derive(v1_0, tmp_path / "new-signer.medge", new_key, version="1.1.0")
    start = datetime.now(UTC)
    with PackageServer(tmp_path / "tls", TOKEN) as server:
        site = make_site(tmp_path / "root", server, old_pair.public_path, v1_0)
        keys = site.layout.trusted_keys_dir
        with running(site) as (agent, appliance):
            # A package signed by a key the device does not trust yet is refused.
            offer = server.offer(signed_by_new, MODEL, "1.1.0")
            agent.handle_update(update_command(site, offer, "u-early"))
            assert agent.wait(60)
            assert "not trusted" in (site.reports("u-early")[-1].reason or "")

            with pytest.raises(OtaError, match=r"endorsed by key \w+, which this device does not trust"):
                agent.handle_rotate_keys(_rotate(endorse_keys(stranger, add=[new_pem], retire=[])))
            altered = endorse_keys(old_key, add=[], retire=[], issued=start).model_copy(update={"add": [new_pem]})
            with pytest.raises(OtaError, match="does not verify: the rotation was altered"):
                agent.handle_rotate_keys(_rotate(altered))
            with pytest.raises(OtaError, match="would retire the last trusted key"):
                agent.handle_rotate_keys(_rotate(endorse_keys(old_key, add=[], retire=[old_pair.key_id])))
            swap = endorse_keys(old_key, add=[new_pem], retire=[old_pair.key_id], issued=start)
            with pytest.raises(OtaError, match=f"key {old_pair.key_id} signed the live package chest-ct-nodule 1.0.0"):
                agent.handle_rotate_keys(_rotate(swap))
            assert sorted(p.name for p in keys.iterdir()) == [f"{old_pair.key_id}.pub"]  # refusals changed nothing

            add = endorse_keys(old_key, add=[new_pem], retire=[], issued=start + timedelta(seconds=1))
            answer = agent.handle_rotate_keys(_rotate(add))
            assert answer == {
                "added": [new_pair.key_id],
                "retired": [],
                "trusted": sorted([old_pair.key_id, new_pair.key_id]),
                "repeated": False,
            }
            assert new_pair.key_id in appliance.packages.trusted and new_pair.key_id in agent.trusted
            assert agent.handle_rotate_keys(_rotate(add))["repeated"] is True  # a re-sent command changes nothing
            with pytest.raises(OtaError, match="not after the last rotation applied"):
                agent.handle_rotate_keys(_rotate(swap))  # issued earlier: a replay

            # The new key now verifies updates; once the live package is signed by it, the old key can go.
            agent.handle_update(update_command(site, offer, "u-new-key"))
            assert agent.wait(60)
            assert site.reports("u-new-key")[-1].step is OtaStep.DONE
            assert live_versions(appliance) == {MODEL: "1.1.0"}
            retire = endorse_keys(new_key, add=[], retire=[old_pair.key_id], issued=start + timedelta(seconds=2))
            assert agent.handle_rotate_keys(_rotate(retire))["retired"] == [old_pair.key_id]
            assert sorted(p.name for p in keys.glob("*.pub")) == [f"{new_pair.key_id}.pub"]
            assert list(appliance.packages.trusted) == [new_pair.key_id]
        assert [kind for kind, *_ in site.events].count("keys-rotated") == 2
        with running(site) as (agent, appliance):  # after a restart the rotated store is the one in use
            assert live_versions(appliance) == {MODEL: "1.1.0"}
