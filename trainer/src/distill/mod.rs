//! Distillation of a teacher into a student.

pub mod loss;
