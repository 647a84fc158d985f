"""Media relaying: attachments are downloaded, cleaned, and uploaded again as the partner's
ghost, so the partner gets a new mxc:// of the bridge's homeserver and no file metadata.

kinds.py: which kind an event is and the pure shape of a copied attachment; clean.py: the
Pillow image cleaner and thumbnailer; transfer.py: download, upload, attachment encryption;
copier.py: the steps together, with the operator's switches and limits.
"""
