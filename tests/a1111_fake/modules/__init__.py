"""A small fake of the AUTOMATIC1111 webui's ``modules`` package (v1.10.1 contract, written from
shared/specs/a1111.md; no webui code): what the OneStep SR extension and the webui's own callers
of an upscaler use. tests/webui_fake.py loads the extension through it as the webui does."""
