"""The apps in ``apps/`` import Flower, as Flower's users write them: they are data for the
tests (copied, their imports changed), never imported as they are; nor is the script that
recorded Flower's figures."""

collect_ignore = ["apps", "record_flower.py"]
