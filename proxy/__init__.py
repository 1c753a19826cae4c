"""authsvc proxy: the pure-Python IMAP4/IMAPS/POP3/POP3S front end (docs/proxy.md).

The architecture in five bullets:

* sans-IO machines parse client and backend bytes and emit commands;
* the routing core (``authsvc.routing``) answers where a login goes;
* a session driver carries the commands out on the event loop;
* a relay moves bytes both ways once the backend has accepted the login
  (``splice(2)`` between plain sockets, else through user space);
* a server owns the listeners, the limits and the graceful drain.
"""
