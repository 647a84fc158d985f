"""Languages: the message catalogs (bridge/locales/<lang>/LC_MESSAGES/bridge.po, made from
bridge/i18n/messages.py's English), which language a recipient gets, and right-to-left bodies.
The developer command that keeps the catalogs up to date is `python -m bridge.i18n`."""
