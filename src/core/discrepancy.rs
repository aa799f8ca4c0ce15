//! discrepancy
