"""Finding, starting and reaching a cluster from outside its processes.

``_session``: session directories (sockets, token, logs). ``_launcher``: starting a
head node process and finding running clusters. ``_admin``: short-lived admin
connections (CLI, ``tree(address=...)``, ``faults.crash``).
"""
