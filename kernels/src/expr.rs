//! Parsing kernel expressions such as `0.8*velocity + 0.2*connectivity`.
//!
//! Grammar: `expr := term ('+' term)*`, `term := factor ('*' factor)*`,
//! `factor := NUMBER | NAME | '(' expr ')' | ('~' | '!') factor`. Numbers in a term multiply
//! its weight; two or more kernels in a term form an element-wise product; `~`/`!` flips the
//! direction. Names (case-insensitive): `velocity` (`vk`), `connectivity` (`ck`),
//! `pseudotime` (`pk`), `cytotrace` (`ctk`), `labeling_time` (`labeling`, `ltk`),
//! `real_time` (`rtk`), `precomputed` (`prk`), and CellRank's class names
//! (`VelocityKernel`, ...); see [`BUILTIN_KERNELS`](crate::kernel::BUILTIN_KERNELS). Every
//! kernel starts from CellRank's defaults; set parameters afterwards with
//! [`KernelSpec::set_param`].
//!
//! Nesting (parentheses and `~`) is limited to [`MAX_DEPTH`] levels, so that a hostile
//! expression cannot exhaust the stack.

use crate::error::{ExprProblem, KernelError};
use crate::kernel::{known_kernels, Kernel, KernelSpec};

/// The deepest nesting of parentheses and `~`/`!` flips a kernel expression may have
/// (`((velocity))` is 2 deep). Real expressions need a handful; the limit keeps a crafted
/// expression from overflowing the parser's stack.
pub const MAX_DEPTH: usize = 64;

/// Parses a kernel expression (see the module docs) and validates it.
pub fn parse(expr: &str) -> Result<KernelSpec, KernelError> {
    let mut p = Parser {
        src: expr,
        chars: expr.char_indices().collect(),
        pos: 0,
        depth: 0,
    };
    let spec = p.expr()?;
    p.skip_ws();
    if p.pos < p.chars.len() {
        return Err(p.error(ExprProblem::UnexpectedInput));
    }
    spec.validate()?;
    Ok(spec)
}

struct Parser<'a> {
    src: &'a str,
    chars: Vec<(usize, char)>,
    pos: usize,
    /// Current nesting of parentheses and flips.
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, problem: ExprProblem) -> KernelError {
        KernelError::Expression {
            expr: self.src.to_string(),
            position: self.chars.get(self.pos).map_or(self.src.len(), |c| c.0),
            problem,
            known: known_kernels(),
        }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.chars.len() && self.chars[self.pos].1.is_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.pos).map(|c| c.1)
    }

    fn expr(&mut self) -> Result<KernelSpec, KernelError> {
        let mut terms = vec![self.term()?];
        while self.peek() == Some('+') {
            self.pos += 1;
            terms.push(self.term()?);
        }
        if terms.len() == 1 && terms[0].0 == 1.0 {
            return Ok(terms.remove(0).1);
        }
        Ok(KernelSpec::sum(terms))
    }

    fn term(&mut self) -> Result<(f64, KernelSpec), KernelError> {
        let mut weight = 1.0;
        let mut kernels = Vec::new();
        loop {
            match self.factor()? {
                Factor::Number(w) => weight *= w,
                Factor::Kernel(k) => kernels.push(*k),
            }
            if self.peek() == Some('*') {
                self.pos += 1;
            } else {
                break;
            }
        }
        match kernels.len() {
            0 => Err(self.error(ExprProblem::NumberOnly)),
            1 => Ok((weight, kernels.remove(0))),
            _ => Ok((weight, KernelSpec::product(kernels))),
        }
    }

    /// Enters one level of nesting (an error past [`MAX_DEPTH`]).
    fn enter(&mut self) -> Result<(), KernelError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(ExprProblem::TooDeep { limit: MAX_DEPTH }));
        }
        Ok(())
    }

    fn factor(&mut self) -> Result<Factor, KernelError> {
        match self.peek() {
            Some('(') => {
                self.enter()?;
                self.pos += 1;
                let e = self.expr()?;
                if self.peek() != Some(')') {
                    return Err(self.error(ExprProblem::MissingParen));
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(Factor::Kernel(Box::new(e)))
            }
            Some('~' | '!') => {
                self.enter()?;
                self.pos += 1;
                let f = self.factor()?;
                self.depth -= 1;
                match f {
                    Factor::Kernel(k) => Ok(Factor::Kernel(Box::new(k.flip()))),
                    Factor::Number(_) => Err(self.error(ExprProblem::FlipNumber)),
                }
            }
            Some(c) if c.is_ascii_digit() || c == '.' => {
                let start = self.pos;
                while self.pos < self.chars.len() {
                    let c = self.chars[self.pos].1;
                    let exponent_sign =
                        (c == '-' || c == '+') && matches!(self.chars[self.pos - 1].1, 'e' | 'E');
                    if c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E') || exponent_sign {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                let text: String = self.chars[start..self.pos].iter().map(|c| c.1).collect();
                text.parse::<f64>()
                    .map(Factor::Number)
                    .map_err(|_| self.error(ExprProblem::BadNumber { text }))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.pos < self.chars.len()
                    && (self.chars[self.pos].1.is_ascii_alphanumeric()
                        || self.chars[self.pos].1 == '_')
                {
                    self.pos += 1;
                }
                let name: String = self.chars[start..self.pos].iter().map(|c| c.1).collect();
                match KernelSpec::named(&name) {
                    Ok(k) => Ok(Factor::Kernel(Box::new(k))),
                    Err(KernelError::UnknownKernel { .. }) => {
                        self.pos = start;
                        Err(self.error(ExprProblem::UnknownKernel { name }))
                    }
                    Err(other) => Err(other),
                }
            }
            _ => Err(self.error(ExprProblem::ExpectedFactor)),
        }
    }
}

enum Factor {
    Number(f64),
    Kernel(Box<KernelSpec>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectivity::ConnectivityParams;
    use crate::transition::Direction;
    use crate::velocity::VelocityParams;

    #[test]
    fn parses_weighted_sums_products_and_flips() {
        let k = parse("0.8*velocity + 0.2*connectivity").unwrap();
        assert_eq!(
            k,
            0.8 * VelocityParams::default() + 0.2 * ConnectivityParams::default()
        );
        assert_eq!(parse("vk").unwrap(), VelocityParams::default().spec());
        let p = parse("velocity * connectivity").unwrap();
        assert!(matches!(p, KernelSpec::Product { ref factors } if factors.len() == 2));
        let b = parse("~(0.5*vk + 0.5*pk)").unwrap();
        assert_eq!(b.direction(), Some(Direction::Backward));
        let n = parse("2 * (vk + ck) + 1e0*pk").unwrap();
        let KernelSpec::Sum { terms } = n else {
            panic!()
        };
        assert_eq!(
            terms.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1.0, 1.0, 1.0]
        );
    }

    #[test]
    fn parser_depth_is_limited() {
        let ok = format!("{}vk{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        for bad in [
            format!("{}vk{}", "(".repeat(5000), ")".repeat(5000)),
            format!("{}vk", "~".repeat(5000)),
            format!("{}vk", "(~".repeat(3000)),
        ] {
            let e = parse(&bad).expect_err("too deep");
            assert!(
                matches!(
                    &e,
                    KernelError::Expression {
                        problem: ExprProblem::TooDeep { limit: MAX_DEPTH },
                        ..
                    }
                ),
                "{e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("64") && msg.contains("kernel expression"),
                "{msg}"
            );
        }
    }

    #[test]
    fn errors_say_where() {
        for bad in [
            "",
            "0.8*",
            "velocity +",
            "foo",
            "0.5",
            "(vk",
            "vk ck",
            "~0.5",
            "vk + ~pk",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("kernel expression") || e.contains("combine"),
                "{bad}: {e}"
            );
        }
    }
}
