"""Security of the field side: certificates and trust lists, users and roles, the audit log.

- :mod:`hil.security.audit`: JSON-lines audit of every write attempt.
- :mod:`hil.security.users`: users file with password hashes, login back-off.
- :mod:`hil.security.certs`: application certificates, trust lists, OPC UA server security.
"""
