//! Machine description and ACPI tables (being written).
