#![no_std]
// This library target exists only so that enforcerd can declare a build-dependency on this
// crate (cargo then rebuilds enforcerd when the programs change). The programs are in main.rs.
