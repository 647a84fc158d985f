"""The lab: real Synapse homeservers on loopback (federating over TLS) and a test client.

Used by the end-to-end tests, the benchmarks and the local demo (``python -m bridge.lab.demo``).
Importing this package needs matrix-synapse, signedjson and matrix-nio (the ``test`` extra).
"""

from .synapse import Homeserver, Lab, LabError, LabUser, free_port, unique_localpart

__all__ = ["Homeserver", "Lab", "LabError", "LabUser", "free_port", "unique_localpart"]
