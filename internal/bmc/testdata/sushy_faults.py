#!/usr/bin/python3
"""Meet a BMC fault with OpenStack's sushy, as Ironic's Redfish driver would.

Usage: sushy_faults.py '<json config>'
  config: url, user, password, system (its @odata.id), mode, image.
  mode "unavailable": a Reset while the BMC answers 503 (sushy does not retry actions), then
    get_system, which sushy retries through the 503s until the BMC is back.
  mode "insert_media": an InsertMedia the BMC fails, then the same again.

Prints one JSON object with what sushy saw; TestBMCFault* checks it.
"""

import json
import logging
import sys
import time

import sushy
from sushy import auth as sushy_auth
from sushy import exceptions


def failure(e):
    return {"class": type(e).__name__, "status": e.status_code, "code": e.code, "detail": e.detail}


def main():
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    cfg = json.loads(sys.argv[1])
    root = sushy.Sushy(cfg["url"], verify=False,
                       auth=sushy_auth.BasicAuth(username=cfg["user"], password=cfg["password"]))
    out = {}
    if cfg["mode"] == "unavailable":
        try:
            root._conn.post(cfg["system"] + "/Actions/ComputerSystem.Reset", data={"ResetType": "ForceOff"})
            out["reset"] = "accepted"
        except exceptions.HTTPError as e:
            out["reset"] = failure(e)
        start = time.monotonic()
        system = root.get_system(cfg["system"])
        out["get_after_seconds"] = time.monotonic() - start
        out["power"] = getattr(system.power_state, "value", system.power_state)
    elif cfg["mode"] == "insert_media":
        system = root.get_system(cfg["system"])
        media = system.managers[0].virtual_media
        vm = media.get_member(sorted(media.members_identities)[0])
        try:
            vm.insert_media(cfg["image"], inserted=True, write_protected=True)
            out["first"] = "accepted"
        except exceptions.HTTPError as e:
            out["first"] = failure(e)
        vm.insert_media(cfg["image"], inserted=True, write_protected=True)
        vm.refresh()
        out["second"] = {"image": vm.image, "inserted": vm.inserted}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
