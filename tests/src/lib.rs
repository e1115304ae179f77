//! Integration tests of flightdeck; see tests/.
