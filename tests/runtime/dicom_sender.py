"""A scanner in a separate process: C-STOREs files and prints each acknowledged SOP Instance UID.

Run as ``python -m tests.runtime.dicom_sender PORT FILE...``. A separate
process keeps the sockets of associations whose SCP was killed out of the
test process (pynetdicom leaves them to the garbage collector).
"""

from __future__ import annotations

import sys

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from runtime.ingest.sockets import nodelay_evt_handlers


def main(port: int, files: list[str]) -> int:
    ae = AE(ae_title="SCANNER1")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers())
    if not assoc.is_established:
        return 1
    for path in files:
        ds = pydicom.dcmread(path)
        status = assoc.send_c_store(ds)
        if not status or status.Status != 0x0000:
            return 2
        print(ds.SOPInstanceUID, flush=True)
    assoc.release()
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2:]))
