# The example specs, installed as the package raysight.examples so a pip user has them too.
#   raysight examples            # lists them
#   raysight examples copy DIR   # copies them (and specs/data) to DIR/specs, ready to run there
