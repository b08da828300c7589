//! Linux and ELF boot (being written).
