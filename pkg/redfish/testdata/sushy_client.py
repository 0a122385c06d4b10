#!/usr/bin/python3
"""Drive a Redfish endpoint with OpenStack's sushy, as Ironic's Redfish driver does.

Usage: sushy_client.py '<json config>'
  config: url, user, password, system (its @odata.id), image (a URL to insert),
          verify (a CA bundle path, or false), auth ("basic" or "auto": sushy's default,
          a session first and basic auth when the service offers none).

Prints one JSON object with what sushy saw after each step; TestSushy checks it. Any exception
fails the script (exit status 1, traceback on stderr).
"""

import json
import logging
import sys

import sushy
from sushy import auth as sushy_auth


def value(v):
    """An enum's value, or v itself (None stays None)."""
    return getattr(v, "value", v)


def connect(cfg, password):
    if cfg["auth"] == "basic":
        return sushy.Sushy(cfg["url"], verify=cfg["verify"],
                           auth=sushy_auth.BasicAuth(username=cfg["user"], password=password))
    return sushy.Sushy(cfg["url"], username=cfg["user"], password=password, verify=cfg["verify"])


def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = json.loads(sys.argv[1])
    out = {"sushy": getattr(sushy, "__version__", None)}

    root = connect(cfg, cfg["password"])
    out["redfish_version"] = root.redfish_version
    out["systems"] = sorted(root.get_system_collection().members_identities)

    system = root.get_system(cfg["system"])
    out["initial"] = {"power": value(system.power_state), "uuid": system.uuid,
                      "boot_target": value(system.boot.target), "memory_gib": system.memory_summary.size_gib}
    out["allowed_resets"] = sorted(value(v) for v in system.get_allowed_reset_system_values())
    out["allowed_boot_targets"] = sorted(value(v) for v in system.get_allowed_system_boot_source_values())
    out["macs"] = sorted(nic.mac_address for nic in system.ethernet_interfaces.get_members())

    system.reset_system(sushy.RESET_FORCE_OFF)
    system.refresh()
    out["after_force_off"] = value(system.power_state)
    system.reset_system(sushy.RESET_ON)
    system.refresh()
    out["after_on"] = value(system.power_state)

    system.set_system_boot_options(sushy.BOOT_SOURCE_TARGET_CD, enabled=sushy.BOOT_SOURCE_ENABLED_ONCE)
    system.refresh()
    out["boot"] = {"target": value(system.boot.target), "enabled": value(system.boot.enabled),
                   "mode": value(system.boot.mode)}

    managers = system.managers
    out["managers"] = [m.path for m in managers]
    mgr = managers[0]
    out["manager_for"] = [s.path for s in mgr.systems]
    media_ids = sorted(mgr.virtual_media.members_identities)
    out["virtual_media"] = media_ids
    vm = mgr.virtual_media.get_member(media_ids[0])
    out["media_types"] = sorted(value(t) for t in vm.media_types)
    vm.insert_media(cfg["image"], inserted=True, write_protected=True)
    vm.refresh()
    out["after_insert"] = {"image": vm.image, "inserted": vm.inserted,
                           "write_protected": vm.write_protected, "connected_via": value(vm.connected_via)}
    vm.eject_media()
    vm.refresh()
    out["after_eject"] = {"image": vm.image, "inserted": vm.inserted}

    # The same system with a wrong password: sushy sees the service's 401.
    try:
        connect(cfg, cfg["password"] + "-wrong").get_system(cfg["system"])
        out["wrong_password"] = "accepted"
    except sushy.exceptions.AccessError as e:
        out["wrong_password"] = {"status": e.status_code, "code": e.code}

    print(json.dumps(out))


if __name__ == "__main__":
    main()
