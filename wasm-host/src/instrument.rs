//! Deploy-time instrumentation that makes an unmodified module pausable.
//!
//! wasmtime cannot snapshot a native call stack, so the guest is taught to unwind its own
//! stack into linear memory and rewind it later. Two passes do that:
//!
//! 1. Our own pass (wasmparser + wasm-encoder) adds *yield points*: an import
//!    `roam.yield` and a mutable global `__roam_pause`, and at every loop header, before
//!    every call to a host import and at the entry of every recursive function it inserts
//!    `global.get $pause; if; call $roam.yield; end`. The check costs one load and one
//!    branch; the host raises the flag from the store's epoch callback. The pass also
//!    exports every mutable global (so the host can read and restore `__stack_pointer` and
//!    friends) and drops custom sections other than `name`.
//! 2. Binaryen's Asyncify (`wasm-opt --asyncify`, Debian package `binaryen`) rewrites
//!    every function that can reach `roam.yield` so that it can save its locals and call
//!    position and return (unwind), or jump back to where it was (rewind). Functions that
//!    cannot reach a yield point are left alone. `-O2` runs after the transform to take
//!    back most of its cost.
//!
//! The result is cached by the hash of the original bytes (see [`crate::cache`]); the
//! instrumented bytes are what a snapshot is tied to, because the unwound stack's layout
//! depends on them.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;

use wasm_encoder::reencode::{self, Reencode};
use wasmparser::{ExternalKind, Operator, Payload, TypeRef, ValType, Validator, WasmFeatures};

use crate::error::HostError;

/// Module and field name of the yield import the pass adds.
pub const YIELD_MODULE: &str = "roam";
/// Field name of the yield import (may unwind: Asyncify instruments its callers).
pub const YIELD_NAME: &str = "yield";
/// Field name of the poll import (never unwinds: a kill or preemption point only).
pub const POLL_NAME: &str = "poll";
/// Export name of the global that pass 1 uses for the unwind flag.
pub const PAUSE_GLOBAL: &str = "__roam_pause";
/// Export name of the global that pass 1 uses for the poll flag.
pub const POLL_GLOBAL: &str = "__roam_pollflag";
/// Export name of the one-page flag memory that replaces both globals after Asyncify.
/// Byte [`FLAG_UNWIND`] asks yield points to unwind; byte [`FLAG_POLL`] asks every check,
/// call-free loops included, to call the host (kill, CPU limit, preemption).
pub const FLAG_MEMORY: &str = "__roam_flags";
pub const FLAG_UNWIND: usize = 0;
pub const FLAG_POLL: usize = 1;
/// Prefix of the exports the pass adds for mutable globals that were not exported.
pub const GLOBAL_EXPORT_PREFIX: &str = "__roam_g";
/// Bumped whenever the instrumentation output changes; part of the cache key.
pub const INSTRUMENT_VERSION: u32 = 8;

/// Bytes of the Asyncify data header `{ current: i32, end: i32 }`.
pub const ASYNCIFY_HEADER: u32 = 8;

/// What the pass did, for logs and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstrumentStats {
    pub functions: u32,
    pub loop_checks: u32,
    /// Call-free loops given a poll point only (see `Scan::may_unwind`).
    pub leaf_loops: u32,
    /// Call-free loops wrapped so that they yield outside their body.
    pub wrapped_loops: u32,
    pub import_call_checks: u32,
    pub entry_checks: u32,
}

/// A module ready to run pausably, plus what the host needs to drive it.
#[derive(Debug, Clone)]
pub struct Instrumented {
    /// The final module bytes (after Asyncify).
    pub bytes: Vec<u8>,
    /// Export names of the mutable globals that make up guest state, in global index order.
    pub state_globals: Vec<String>,
    /// Upper bound of the bytes Asyncify saves for one frame of each function, by
    /// function index of the final module (0 for imports).
    pub frame_bounds: Vec<u32>,
    /// Export name of memory 0.
    pub memory_export: String,
    pub stats: InstrumentStats,
}

/// Options of the pass. `wasm_opt` names the Binaryen binary (default: `wasm-opt` on PATH,
/// or `$ROAM_WASM_OPT`).
#[derive(Debug, Clone)]
pub struct InstrumentOptions {
    pub wasm_opt: PathBuf,
    /// Binaryen optimisation level run after Asyncify (0 = none).
    pub opt_level: u8,
}

impl Default for InstrumentOptions {
    fn default() -> Self {
        let wasm_opt = std::env::var_os("ROAM_WASM_OPT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("wasm-opt"));
        InstrumentOptions {
            wasm_opt,
            opt_level: 2,
        }
    }
}

/// The wasm features roam accepts from guests (what LLVM and clang emit today).
pub fn accepted_features() -> WasmFeatures {
    WasmFeatures::MUTABLE_GLOBAL
        | WasmFeatures::SATURATING_FLOAT_TO_INT
        | WasmFeatures::SIGN_EXTENSION
        | WasmFeatures::MULTI_VALUE
        | WasmFeatures::BULK_MEMORY
        | WasmFeatures::REFERENCE_TYPES
        | WasmFeatures::SIMD
        | WasmFeatures::FLOATS
        | WasmFeatures::CALL_INDIRECT_OVERLONG
        | WasmFeatures::BULK_MEMORY_OPT
        | WasmFeatures::MULTI_MEMORY
}

/// Validates `wasm` (binary or WAT text) and returns the binary form.
pub fn parse_module_bytes(wasm: &[u8]) -> Result<Vec<u8>, HostError> {
    let bytes = if wasm.starts_with(b"\0asm") {
        wasm.to_vec()
    } else {
        wat::parse_bytes(wasm)
            .map_err(|e| HostError::InvalidModule(format!("not a wasm binary, and not WAT: {e}")))?
            .into_owned()
    };
    Validator::new_with_features(accepted_features())
        .validate_all(&bytes)
        .map_err(|e| HostError::InvalidModule(e.to_string()))?;
    Ok(bytes)
}

/// Runs only the first pass (yield points, exports); for inspection and experiments.
pub fn yield_points_only(wasm: &[u8]) -> Result<(Vec<u8>, InstrumentStats), HostError> {
    let scan = Scan::new(wasm)?;
    add_yield_points(wasm, &scan)
}

/// Runs both passes on a validated module.
pub fn instrument(wasm: &[u8], opts: &InstrumentOptions) -> Result<Instrumented, HostError> {
    let scan = Scan::new(wasm)?;
    let (yield_points, stats) = add_yield_points(wasm, &scan)?;
    let asyncified = run_asyncify(&yield_points, opts)?;
    let bytes = add_flag_memory(&asyncified)?;
    describe(bytes, stats)
}

/// Builds the description of an already instrumented module (e.g. loaded from cache or
/// received from a peer).
pub fn describe(bytes: Vec<u8>, stats: InstrumentStats) -> Result<Instrumented, HostError> {
    let types = Validator::new_with_features(accepted_features())
        .validate_all(&bytes)
        .map_err(|e| HostError::InvalidModule(format!("instrumented module invalid: {e}")))?;
    let mut state_globals: Vec<(u32, String)> = Vec::new();
    let mut memory_export = None;
    let mut exported_funcs = BTreeSet::new();
    let mut frame_bounds = Vec::new();
    let mut imported_funcs = 0u32;
    let mut defined = 0u32;
    let mut global_mutability: Vec<bool> = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        match payload.map_err(|e| HostError::InvalidModule(e.to_string()))? {
            Payload::ImportSection(s) => {
                for imp in s.into_imports() {
                    let imp = imp.map_err(|e| HostError::InvalidModule(e.to_string()))?;
                    match imp.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => {
                            imported_funcs += 1;
                            frame_bounds.push(0);
                        }
                        TypeRef::Global(g) => global_mutability.push(g.mutable),
                        _ => {}
                    }
                }
            }
            Payload::GlobalSection(s) => {
                for g in s {
                    let g = g.map_err(|e| HostError::InvalidModule(e.to_string()))?;
                    global_mutability.push(g.ty.mutable);
                }
            }
            Payload::ExportSection(s) => {
                for e in s {
                    let e = e.map_err(|e| HostError::InvalidModule(e.to_string()))?;
                    match e.kind {
                        ExternalKind::Global
                            if global_mutability
                                .get(e.index as usize)
                                .copied()
                                .unwrap_or(false)
                                && e.name != PAUSE_GLOBAL
                                && e.name != POLL_GLOBAL
                                && !state_globals.iter().any(|(i, _)| *i == e.index) =>
                        {
                            state_globals.push((e.index, e.name.to_string()));
                        }
                        ExternalKind::Memory if e.index == 0 && memory_export.is_none() => {
                            memory_export = Some(e.name.to_string())
                        }
                        ExternalKind::Func => {
                            exported_funcs.insert(e.name.to_string());
                        }
                        _ => {}
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let func_index = imported_funcs + defined;
                defined += 1;
                let ty = types.as_ref().core_function_at(func_index);
                let params = types[ty].unwrap_func().params().to_vec();
                let mut bytes_saved: u64 = 4; // the call index
                for p in &params {
                    bytes_saved += val_size(*p);
                }
                for local in body
                    .get_locals_reader()
                    .map_err(|e| HostError::InvalidModule(e.to_string()))?
                {
                    let (count, ty) = local.map_err(|e| HostError::InvalidModule(e.to_string()))?;
                    bytes_saved += u64::from(count) * val_size(ty);
                }
                // Slack for alignment and any temporaries Asyncify spills.
                let bound = bytes_saved.saturating_mul(2).saturating_add(64);
                frame_bounds.push(u32::try_from(bound).unwrap_or(u32::MAX));
            }
            _ => {}
        }
    }
    for needed in [
        "asyncify_start_unwind",
        "asyncify_stop_unwind",
        "asyncify_start_rewind",
        "asyncify_stop_rewind",
        "asyncify_get_state",
    ] {
        if !exported_funcs.contains(needed) {
            return Err(HostError::InvalidModule(format!(
                "instrumented module lacks export `{needed}`"
            )));
        }
    }
    state_globals.sort_by_key(|(i, _)| *i);
    Ok(Instrumented {
        bytes,
        state_globals: state_globals.into_iter().map(|(_, n)| n).collect(),
        frame_bounds,
        memory_export: memory_export
            .ok_or_else(|| HostError::InvalidModule("module has no memory 0".into()))?,
        stats,
    })
}

fn val_size(ty: ValType) -> u64 {
    match ty {
        ValType::I32 | ValType::F32 => 4,
        ValType::I64 | ValType::F64 => 8,
        ValType::V128 => 16,
        ValType::Ref(_) => 8,
    }
}

/// Facts about the original module that the rewrite needs.
struct Scan {
    imported_funcs: u32,
    total_globals: u32,
    /// Per defined function: does it need an entry check (it sits on a call-graph cycle)?
    entry_check: Vec<bool>,
    /// Per defined function: is it instrumented by Asyncify anyway (it has a yield point,
    /// an indirect call, or calls such a function) or exported? Only these get their
    /// call-free loops wrapped into yield points; wrapping a loop elsewhere would make
    /// Asyncify instrument the function and every caller, which costs more than the
    /// wrapped loops gain.
    may_unwind: Vec<bool>,
    /// Mutable, defined, not yet exported globals.
    globals_to_export: Vec<u32>,
    memory_exported: bool,
    has_memory: bool,
    type_count: u32,
    has_sections: SectionsPresent,
}

#[derive(Default, Clone, Copy)]
struct SectionsPresent {
    types: bool,
    imports: bool,
    globals: bool,
    exports: bool,
}

impl Scan {
    fn new(wasm: &[u8]) -> Result<Scan, HostError> {
        let bad = |e: wasmparser::BinaryReaderError| HostError::InvalidModule(e.to_string());
        let mut imported_funcs = 0u32;
        let mut imported_globals = 0u32;
        let mut defined_globals: Vec<bool> = Vec::new();
        let mut exported_globals = BTreeSet::new();
        let mut memory_exported = false;
        let mut has_memory = false;
        let mut type_count = 0u32;
        let mut present = SectionsPresent::default();
        let mut address_taken: BTreeSet<u32> = BTreeSet::new();
        // Per defined function: direct callees and whether it calls indirectly.
        let mut callees: Vec<Vec<u32>> = Vec::new();
        let mut calls_indirect: Vec<bool> = Vec::new();
        let mut has_call_loop: Vec<bool> = Vec::new();
        let mut exported_funcs: BTreeSet<u32> = BTreeSet::new();
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            match payload.map_err(bad)? {
                Payload::TypeSection(s) => {
                    present.types = true;
                    for group in s {
                        type_count += group.map_err(bad)?.types().len() as u32;
                    }
                }
                Payload::ImportSection(s) => {
                    present.imports = true;
                    for imp in s.into_imports() {
                        match imp.map_err(bad)?.ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => imported_funcs += 1,
                            TypeRef::Global(_) => imported_globals += 1,
                            TypeRef::Memory(_) => has_memory = true,
                            _ => {}
                        }
                    }
                }
                Payload::MemorySection(s) => has_memory |= s.count() > 0,
                Payload::GlobalSection(s) => {
                    present.globals = true;
                    for g in s {
                        defined_globals.push(g.map_err(bad)?.ty.mutable);
                    }
                }
                Payload::ExportSection(s) => {
                    present.exports = true;
                    for e in s {
                        let e = e.map_err(bad)?;
                        match e.kind {
                            ExternalKind::Global => {
                                exported_globals.insert(e.index);
                            }
                            ExternalKind::Memory if e.index == 0 => memory_exported = true,
                            ExternalKind::Func => {
                                exported_funcs.insert(e.index);
                            }
                            _ => {}
                        }
                    }
                }
                Payload::ElementSection(s) => {
                    for elem in s {
                        match elem.map_err(bad)?.items {
                            wasmparser::ElementItems::Functions(funcs) => {
                                for f in funcs {
                                    address_taken.insert(f.map_err(bad)?);
                                }
                            }
                            wasmparser::ElementItems::Expressions(_, exprs) => {
                                for expr in exprs {
                                    for op in expr.map_err(bad)?.get_operators_reader() {
                                        if let Operator::RefFunc { function_index } =
                                            op.map_err(bad)?
                                        {
                                            address_taken.insert(function_index);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    has_call_loop.push(loops_containing_calls(&body).map_err(bad)?.contains(&true));
                    let mut direct = Vec::new();
                    let mut indirect = false;
                    for op in body.get_operators_reader().map_err(bad)? {
                        match op.map_err(bad)? {
                            Operator::Call { function_index }
                            | Operator::ReturnCall { function_index } => {
                                direct.push(function_index)
                            }
                            Operator::CallIndirect { .. }
                            | Operator::ReturnCallIndirect { .. }
                            | Operator::CallRef { .. }
                            | Operator::ReturnCallRef { .. } => indirect = true,
                            Operator::RefFunc { function_index } => {
                                address_taken.insert(function_index);
                            }
                            Operator::TableSet { .. }
                            | Operator::TableGrow { .. }
                            | Operator::TableFill { .. }
                            | Operator::TableCopy { .. }
                            | Operator::TableInit { .. } => {
                                // Tables are rebuilt from the module on restore, so a
                                // module that changes them could not resume correctly.
                                return Err(HostError::InvalidModule(
                                    "module changes its tables at run time (table.set/grow/fill/copy/init); roam cannot capture tables yet".into(),
                                ));
                            }
                            _ => {}
                        }
                    }
                    callees.push(direct);
                    calls_indirect.push(indirect);
                }
                _ => {}
            }
        }
        if !has_memory {
            return Err(HostError::InvalidModule(
                "module has no linear memory; roam needs memory 0 for capture".into(),
            ));
        }
        let n = callees.len();
        let mut graph: Vec<Vec<usize>> = vec![Vec::new(); n];
        let taken: Vec<usize> = address_taken
            .iter()
            .filter(|f| **f >= imported_funcs)
            .map(|f| (*f - imported_funcs) as usize)
            .filter(|f| *f < n)
            .collect();
        for (i, cs) in callees.iter().enumerate() {
            for c in cs {
                if *c >= imported_funcs && ((*c - imported_funcs) as usize) < n {
                    graph[i].push((*c - imported_funcs) as usize);
                }
            }
            if calls_indirect[i] {
                graph[i].extend(taken.iter().copied());
            }
        }
        let entry_check = on_cycle(&graph);
        // Functions Asyncify will instrument: those with a yield check or an indirect call,
        // then, to a fixed point, every caller of one.
        let mut may_unwind: Vec<bool> = (0..n)
            .map(|i| {
                entry_check[i]
                    || has_call_loop[i]
                    || calls_indirect[i]
                    || callees[i].iter().any(|c| *c < imported_funcs)
            })
            .collect();
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..n {
                if !may_unwind[i] && graph[i].iter().any(|c| may_unwind[*c]) {
                    may_unwind[i] = true;
                    changed = true;
                }
            }
        }
        for f in &exported_funcs {
            if *f >= imported_funcs && ((*f - imported_funcs) as usize) < n {
                may_unwind[(*f - imported_funcs) as usize] = true;
            }
        }
        let globals_to_export = defined_globals
            .iter()
            .enumerate()
            .filter(|(_, mutable)| **mutable)
            .map(|(i, _)| imported_globals + i as u32)
            .filter(|g| !exported_globals.contains(g))
            .collect();
        Ok(Scan {
            imported_funcs,
            total_globals: imported_globals + defined_globals.len() as u32,
            entry_check,
            may_unwind,
            globals_to_export,
            memory_exported,
            has_memory,
            type_count,
            has_sections: present,
        })
    }
}

/// Marks the nodes of `graph` that lie on a cycle (a non-trivial strongly connected
/// component or a self loop). Iterative Tarjan, so deep call graphs cannot overflow.
fn on_cycle(graph: &[Vec<usize>]) -> Vec<bool> {
    let n = graph.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut result = vec![false; n];
    let mut next = 0usize;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut edge)) = work.last_mut() {
            if *edge < graph[v].len() {
                let w = graph[v][*edge];
                *edge += 1;
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                work.pop();
                if let Some(&(parent, _)) = work.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut component = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    let cyclic = component.len() > 1 || graph[v].contains(&v);
                    if cyclic {
                        for w in component {
                            result[w] = true;
                        }
                    }
                }
            }
        }
    }
    result
}

/// Pass 1: adds the yield import, the pause global, the checks and the exports.
fn add_yield_points(wasm: &[u8], scan: &Scan) -> Result<(Vec<u8>, InstrumentStats), HostError> {
    let mut rewriter = YieldPointRewriter {
        scan,
        yield_type: scan.type_count,
        yield_func: scan.imported_funcs,
        poll_func: scan.imported_funcs + 1,
        pause_global: scan.total_globals,
        poll_global: scan.total_globals + 1,
        next_defined: 0,
        emitted: SectionsPresent::default(),
        stats: InstrumentStats::default(),
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, wasmparser::Parser::new(0), wasm)
        .map_err(|e| HostError::InvalidModule(format!("instrumentation failed: {e}")))?;
    let stats = rewriter.stats.clone();
    Ok((module.finish(), stats))
}

struct YieldPointRewriter<'a> {
    scan: &'a Scan,
    yield_type: u32,
    yield_func: u32,
    poll_func: u32,
    pause_global: u32,
    poll_global: u32,
    next_defined: usize,
    emitted: SectionsPresent,
    stats: InstrumentStats,
}

impl YieldPointRewriter<'_> {
    /// A poll point in a call-free loop: never unwinds, so Asyncify leaves the loop alone.
    fn emit_poll(&mut self, f: &mut wasm_encoder::Function) {
        f.instruction(&wasm_encoder::Instruction::GlobalGet(self.poll_global));
        f.instruction(&wasm_encoder::Instruction::If(
            wasm_encoder::BlockType::Empty,
        ));
        f.instruction(&wasm_encoder::Instruction::Call(self.poll_func));
        f.instruction(&wasm_encoder::Instruction::End);
    }

    fn emit_check(&mut self, f: &mut wasm_encoder::Function) {
        f.instruction(&wasm_encoder::Instruction::GlobalGet(self.pause_global));
        f.instruction(&wasm_encoder::Instruction::If(
            wasm_encoder::BlockType::Empty,
        ));
        f.instruction(&wasm_encoder::Instruction::Call(self.yield_func));
        f.instruction(&wasm_encoder::Instruction::End);
    }

    fn add_types(&mut self, types: &mut wasm_encoder::TypeSection) {
        types.ty().function([], []);
        self.emitted.types = true;
    }

    fn add_imports(&mut self, imports: &mut wasm_encoder::ImportSection) {
        imports.import(
            YIELD_MODULE,
            YIELD_NAME,
            wasm_encoder::EntityType::Function(self.yield_type),
        );
        imports.import(
            YIELD_MODULE,
            POLL_NAME,
            wasm_encoder::EntityType::Function(self.yield_type),
        );
        self.emitted.imports = true;
    }

    fn add_globals(&mut self, globals: &mut wasm_encoder::GlobalSection) {
        for _ in [PAUSE_GLOBAL, POLL_GLOBAL] {
            globals.global(
                wasm_encoder::GlobalType {
                    val_type: wasm_encoder::ValType::I32,
                    mutable: true,
                    shared: false,
                },
                &wasm_encoder::ConstExpr::i32_const(0),
            );
        }
        self.emitted.globals = true;
    }

    fn add_exports(&mut self, exports: &mut wasm_encoder::ExportSection) {
        exports.export(
            PAUSE_GLOBAL,
            wasm_encoder::ExportKind::Global,
            self.pause_global,
        );
        exports.export(
            POLL_GLOBAL,
            wasm_encoder::ExportKind::Global,
            self.poll_global,
        );
        for g in &self.scan.globals_to_export {
            exports.export(
                &format!("{GLOBAL_EXPORT_PREFIX}{g}"),
                wasm_encoder::ExportKind::Global,
                *g,
            );
        }
        if !self.scan.memory_exported && self.scan.has_memory {
            exports.export("memory", wasm_encoder::ExportKind::Memory, 0);
        }
        self.emitted.exports = true;
    }
}

fn section_rank(id: wasm_encoder::SectionId) -> Option<u8> {
    use wasm_encoder::SectionId as S;
    Some(match id {
        S::Type => 1,
        S::Import => 2,
        S::Function => 3,
        S::Table => 4,
        S::Memory => 5,
        S::Tag => 6,
        S::Global => 7,
        S::Export => 8,
        S::Start => 9,
        S::Element => 10,
        S::DataCount => 11,
        S::Code => 12,
        S::Data => 13,
        _ => return None,
    })
}

impl Reencode for YieldPointRewriter<'_> {
    type Error = Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Infallible>> {
        Ok(if func >= self.scan.imported_funcs {
            func + 2
        } else {
            func
        })
    }

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_type_section(self, types, section)?;
        self.add_types(types);
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_import_section(self, imports, section)?;
        self.add_imports(imports);
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut wasm_encoder::GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_global_section(self, globals, section)?;
        self.add_globals(globals);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_export_section(self, exports, section)?;
        self.add_exports(exports);
        Ok(())
    }

    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        // Keep names (readable traps); drop DWARF, producers and target_features, which
        // the older Binaryen may not understand and which no longer describe the output.
        if section.name() == "name" {
            reencode::utils::parse_custom_section(self, module, section)?;
        }
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<wasm_encoder::SectionId>,
        before: Option<wasm_encoder::SectionId>,
    ) -> Result<(), reencode::Error<Infallible>> {
        // Emit the sections the module lacks, just before the first section that must
        // follow them.
        let before_rank = match before {
            Some(id) => match section_rank(id) {
                Some(r) => r,
                None => return Ok(()), // custom sections may sit anywhere
            },
            None => u8::MAX,
        };
        if !self.scan.has_sections.types && !self.emitted.types && before_rank > 1 {
            let mut s = wasm_encoder::TypeSection::new();
            self.add_types(&mut s);
            module.section(&s);
        }
        if !self.scan.has_sections.imports && !self.emitted.imports && before_rank > 2 {
            let mut s = wasm_encoder::ImportSection::new();
            self.add_imports(&mut s);
            module.section(&s);
        }
        if !self.scan.has_sections.globals && !self.emitted.globals && before_rank > 7 {
            let mut s = wasm_encoder::GlobalSection::new();
            self.add_globals(&mut s);
            module.section(&s);
        }
        if !self.scan.has_sections.exports && !self.emitted.exports && before_rank > 8 {
            let mut s = wasm_encoder::ExportSection::new();
            self.add_exports(&mut s);
            module.section(&s);
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        let mut f = self.new_function_with_parsed_locals(&func)?;
        let defined = self.next_defined;
        self.next_defined += 1;
        self.stats.functions += 1;
        if self.scan.entry_check.get(defined).copied().unwrap_or(false) {
            self.emit_check(&mut f);
            self.stats.entry_checks += 1;
        }
        let loops_with_calls = loops_containing_calls(&func)?;
        let mut loop_index = 0usize;
        // Open control frames; for each, the labels our wrappers put between it and its
        // parent (branches that leave it must count them).
        let mut frames: Vec<u32> = vec![0];
        let mut reader = func.get_operators_reader()?;
        while !reader.eof() {
            let op = reader.read()?;
            match op {
                Operator::Loop { blockty } => {
                    let has_call = loops_with_calls.get(loop_index).copied().unwrap_or(true);
                    loop_index += 1;
                    if has_call {
                        f.instruction(&self.instruction(op)?);
                        self.emit_check(&mut f);
                        self.stats.loop_checks += 1;
                        frames.push(0);
                    } else if blockty == wasmparser::BlockType::Empty
                        && self.scan.may_unwind.get(defined).copied().unwrap_or(true)
                    {
                        // A call-free loop: its check leaves the loop and yields *outside*
                        // it, then re-enters at the header (see `emit_wrapped_loop_end`).
                        // Asyncify then guards the loop as a whole, not every iteration.
                        use wasm_encoder::{BlockType, Instruction as I};
                        f.instruction(&I::Block(BlockType::Empty)); // $done
                        f.instruction(&I::Loop(BlockType::Empty)); // $reenter
                        f.instruction(&I::Block(BlockType::Empty)); // $pause
                        f.instruction(&self.instruction(op)?);
                        f.instruction(&I::GlobalGet(self.pause_global));
                        f.instruction(&I::BrIf(1));
                        self.stats.wrapped_loops += 1;
                        frames.push(WRAPPED_LOOP_LABELS);
                    } else {
                        // Call-free loops of functions Asyncify leaves alone, and typed
                        // call-free loops: a poll point, which can kill or preempt but not
                        // unwind. A pause waits for the function to return.
                        f.instruction(&self.instruction(op)?);
                        self.emit_poll(&mut f);
                        self.stats.leaf_loops += 1;
                        frames.push(0);
                    }
                }
                Operator::Block { .. } | Operator::If { .. } => {
                    frames.push(0);
                    f.instruction(&self.instruction(op)?);
                }
                Operator::End => {
                    f.instruction(&self.instruction(op)?);
                    if frames.pop() == Some(WRAPPED_LOOP_LABELS) {
                        self.emit_wrapped_loop_end(&mut f);
                    }
                }
                Operator::Br { relative_depth } => {
                    let d = adjusted_depth(&frames, relative_depth);
                    f.instruction(&wasm_encoder::Instruction::Br(d));
                }
                Operator::BrIf { relative_depth } => {
                    let d = adjusted_depth(&frames, relative_depth);
                    f.instruction(&wasm_encoder::Instruction::BrIf(d));
                }
                Operator::BrTable { targets } => {
                    let mut ts = Vec::with_capacity(targets.len() as usize);
                    for t in targets.targets() {
                        ts.push(adjusted_depth(&frames, t?));
                    }
                    let default = adjusted_depth(&frames, targets.default());
                    f.instruction(&wasm_encoder::Instruction::BrTable(ts.into(), default));
                }
                Operator::Call { function_index } if function_index < self.scan.imported_funcs => {
                    self.emit_check(&mut f);
                    self.stats.import_call_checks += 1;
                    f.instruction(&self.instruction(op)?);
                }
                _ => {
                    f.instruction(&self.instruction(op)?);
                }
            }
        }
        code.function(&f);
        Ok(())
    }
}

/// Labels a wrapped loop adds around itself: `$done`, `$reenter`, `$pause`.
const WRAPPED_LOOP_LABELS: u32 = 3;

/// A branch `depth` labels out from the innermost of `frames`, in the rewritten code:
/// every frame it leaves may have wrapper labels around it that it leaves too.
fn adjusted_depth(frames: &[u32], depth: u32) -> u32 {
    // frames[n-1] is the innermost open frame; a branch of `depth` leaves the innermost
    // `depth` frames, and with each of them the wrapper labels around it.
    let start = frames.len().saturating_sub(depth as usize);
    depth + frames[start..].iter().sum::<u32>()
}

impl YieldPointRewriter<'_> {
    /// Closes the wrapper of a call-free loop (its own `end` was just written):
    /// on normal exit leave the wrapper; on a pause yield, then re-enter the loop.
    fn emit_wrapped_loop_end(&mut self, f: &mut wasm_encoder::Function) {
        use wasm_encoder::Instruction as I;
        f.instruction(&I::Br(2)); // loop finished: out of $done
        f.instruction(&I::End); // $pause
        f.instruction(&I::Call(self.yield_func));
        f.instruction(&I::Br(0)); // back to $reenter
        f.instruction(&I::End); // $reenter
        f.instruction(&I::End); // $done
    }
}

/// For each loop of a function body, in order of appearance: does its body contain a call?
fn loops_containing_calls(
    func: &wasmparser::FunctionBody<'_>,
) -> Result<Vec<bool>, wasmparser::BinaryReaderError> {
    let mut result = Vec::new();
    // Open blocks: Some(index into result) for loops, None for other blocks.
    let mut open: Vec<Option<usize>> = Vec::new();
    for op in func.get_operators_reader()? {
        match op? {
            Operator::Loop { .. } => {
                open.push(Some(result.len()));
                result.push(false);
            }
            Operator::Block { .. }
            | Operator::If { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. } => open.push(None),
            Operator::End => {
                open.pop();
            }
            Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => {
                for l in open.iter().flatten() {
                    result[*l] = true;
                }
            }
            _ => {}
        }
    }
    Ok(result)
}

/// Pass 3: the two flag globals become bytes of a one-page memory of their own, which
/// the host can set from any thread while the job runs (a global can only be written
/// through the store, i.e. from the job's own thread). Binaryen 108 predates
/// multi-memory, hence a pass after it.
fn add_flag_memory(wasm: &[u8]) -> Result<Vec<u8>, HostError> {
    let bad = |e: wasmparser::BinaryReaderError| HostError::InvalidModule(e.to_string());
    let (mut pause, mut poll) = (None, None);
    let mut memories = 0u32;
    let mut has_memory_section = false;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(bad)? {
            Payload::ImportSection(s) => {
                for imp in s.into_imports() {
                    if matches!(imp.map_err(bad)?.ty, TypeRef::Memory(_)) {
                        memories += 1;
                    }
                }
            }
            Payload::MemorySection(s) => {
                has_memory_section = true;
                memories += s.count();
            }
            Payload::ExportSection(s) => {
                for e in s {
                    let e = e.map_err(bad)?;
                    if e.kind == ExternalKind::Global && e.name == PAUSE_GLOBAL {
                        pause = Some(e.index);
                    }
                    if e.kind == ExternalKind::Global && e.name == POLL_GLOBAL {
                        poll = Some(e.index);
                    }
                }
            }
            _ => {}
        }
    }
    let (Some(pause), Some(poll)) = (pause, poll) else {
        return Err(HostError::InvalidModule(
            "flag globals missing after Asyncify".into(),
        ));
    };
    let mut rewriter = FlagMemoryRewriter {
        pause,
        poll,
        flag_memory: memories,
        has_memory_section,
        emitted_memory: false,
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, wasmparser::Parser::new(0), wasm)
        .map_err(|e| HostError::InvalidModule(format!("flag memory pass failed: {e}")))?;
    Ok(module.finish())
}

struct FlagMemoryRewriter {
    pause: u32,
    poll: u32,
    flag_memory: u32,
    has_memory_section: bool,
    emitted_memory: bool,
}

impl FlagMemoryRewriter {
    fn add_memory(&mut self, memories: &mut wasm_encoder::MemorySection) {
        memories.memory(wasm_encoder::MemoryType {
            minimum: 1,
            maximum: Some(1),
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        self.emitted_memory = true;
    }
}

impl Reencode for FlagMemoryRewriter {
    type Error = String;

    fn parse_memory_section(
        &mut self,
        memories: &mut wasm_encoder::MemorySection,
        section: wasmparser::MemorySectionReader<'_>,
    ) -> Result<(), reencode::Error<String>> {
        reencode::utils::parse_memory_section(self, memories, section)?;
        self.add_memory(memories);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error<String>> {
        reencode::utils::parse_export_section(self, exports, section)?;
        exports.export(
            FLAG_MEMORY,
            wasm_encoder::ExportKind::Memory,
            self.flag_memory,
        );
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<wasm_encoder::SectionId>,
        before: Option<wasm_encoder::SectionId>,
    ) -> Result<(), reencode::Error<String>> {
        let before_rank = match before {
            Some(id) => match section_rank(id) {
                Some(r) => r,
                None => return Ok(()),
            },
            None => u8::MAX,
        };
        if !self.has_memory_section && !self.emitted_memory && before_rank > 5 {
            let mut s = wasm_encoder::MemorySection::new();
            self.add_memory(&mut s);
            module.section(&s);
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error<String>> {
        let mut f = self.new_function_with_parsed_locals(&func)?;
        let mut reader = func.get_operators_reader()?;
        while !reader.eof() {
            let op = reader.read()?;
            match op {
                Operator::GlobalGet { global_index }
                    if global_index == self.pause || global_index == self.poll =>
                {
                    let offset = if global_index == self.pause {
                        FLAG_UNWIND
                    } else {
                        FLAG_POLL
                    };
                    f.instruction(&wasm_encoder::Instruction::I32Const(0));
                    f.instruction(&wasm_encoder::Instruction::I32Load8U(
                        wasm_encoder::MemArg {
                            offset: offset as u64,
                            align: 0,
                            memory_index: self.flag_memory,
                        },
                    ));
                }
                Operator::GlobalSet { global_index }
                    if global_index == self.pause || global_index == self.poll =>
                {
                    return Err(reencode::Error::UserError(
                        "module writes a roam flag global".into(),
                    ));
                }
                _ => {
                    f.instruction(&self.instruction(op)?);
                }
            }
        }
        code.function(&f);
        Ok(())
    }
}

/// Pass 2: Binaryen's Asyncify, limited to what can reach `roam.yield`.
fn run_asyncify(wasm: &[u8], opts: &InstrumentOptions) -> Result<Vec<u8>, HostError> {
    let dir = tempfile::tempdir().map_err(|e| HostError::Io {
        context: "creating a temporary directory for wasm-opt".into(),
        source: e,
    })?;
    let input = dir.path().join("in.wasm");
    let output = dir.path().join("out.wasm");
    std::fs::write(&input, wasm).map_err(|e| HostError::Io {
        context: format!("writing {}", input.display()),
        source: e,
    })?;
    let mut cmd = Command::new(&opts.wasm_opt);
    cmd.arg(&input)
        .args([
            "--enable-bulk-memory",
            "--enable-sign-ext",
            "--enable-mutable-globals",
            "--enable-nontrapping-float-to-int",
            "--enable-multivalue",
            "--enable-reference-types",
            "--enable-simd",
            "--asyncify",
        ])
        .arg(format!(
            "--pass-arg=asyncify-imports@{YIELD_MODULE}.{YIELD_NAME}"
        ));
    if opts.opt_level > 0 {
        cmd.arg(format!("-O{}", opts.opt_level.min(4)));
    }
    cmd.arg("-o").arg(&output);
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            HostError::WasmOptMissing(opts.wasm_opt.clone())
        } else {
            HostError::Io {
                context: format!("running {}", opts.wasm_opt.display()),
                source: e,
            }
        }
    })?;
    if !out.status.success() {
        return Err(HostError::InvalidModule(format!(
            "wasm-opt --asyncify failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::read(&output).map_err(|e| HostError::Io {
        context: format!("reading {}", output.display()),
        source: e,
    })
}

/// The version line of the Binaryen in use; part of the instrumentation cache key.
pub fn wasm_opt_version(path: &Path) -> Result<String, HostError> {
    let out = Command::new(path).arg("--version").output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            HostError::WasmOptMissing(path.to_path_buf())
        } else {
            HostError::Io {
                context: format!("running {} --version", path.display()),
                source: e,
            }
        }
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Import names of a module, for error messages about unknown imports.
pub fn function_imports(wasm: &[u8]) -> Result<Vec<(String, String)>, HostError> {
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let Payload::ImportSection(s) =
            payload.map_err(|e| HostError::InvalidModule(e.to_string()))?
        {
            for imp in s.into_imports() {
                let imp = imp.map_err(|e| HostError::InvalidModule(e.to_string()))?;
                if matches!(imp.ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
                    out.push((imp.module.to_string(), imp.name.to_string()));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_depths_count_wrapper_labels() {
        // function, block, wrapped loop, block
        let frames = [0, 0, WRAPPED_LOOP_LABELS, 0];
        assert_eq!(adjusted_depth(&frames, 0), 0, "to the innermost block");
        assert_eq!(adjusted_depth(&frames, 1), 1, "to the wrapped loop itself");
        assert_eq!(
            adjusted_depth(&frames, 2),
            2 + WRAPPED_LOOP_LABELS,
            "out of it"
        );
        assert_eq!(
            adjusted_depth(&frames, 3),
            3 + WRAPPED_LOOP_LABELS,
            "to the function"
        );
    }

    #[test]
    fn modules_that_change_tables_are_refused() {
        let wat = r#"(module
            (memory 1)
            (table 2 funcref)
            (func $f)
            (elem declare func $f)
            (func (export "_start") (table.set (i32.const 0) (ref.func $f))))"#;
        let bytes = parse_module_bytes(wat.as_bytes()).expect("valid");
        let err = Scan::new(&bytes).err().expect("refused");
        assert!(err.to_string().contains("tables"), "{err}");
    }

    #[test]
    fn cycles_are_found() {
        // 0 -> 1 -> 2 -> 1, 3 -> 3, 4 -> 0
        let g = vec![vec![1], vec![2], vec![1], vec![3], vec![0]];
        assert_eq!(on_cycle(&g), vec![false, true, true, true, false]);
    }

    #[test]
    fn yield_points_are_inserted_and_indices_shift() {
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory 1)
            (global $g (mut i32) (i32.const 7))
            (func $rec (param i32) (result i32)
                local.get 0
                if (result i32) local.get 0 i32.const 1 i32.sub call $rec else i32.const 0 end)
            (func $kernel (loop $k (br_if $k (i32.const 0))))
            (func $main (export "_start")
                (call $kernel)
                (loop $leaf (br_if $leaf (i32.const 0)))
                (loop $l (br_if $l (i32.eqz (call $rec (i32.const 1)))))
                i32.const 3 call $rec call $exit))"#;
        let bytes = parse_module_bytes(wat.as_bytes()).expect("valid");
        let scan = Scan::new(&bytes).expect("scan");
        assert_eq!(scan.entry_check, vec![true, false, false]);
        assert_eq!(scan.may_unwind, vec![true, false, true]);
        let (out, stats) = add_yield_points(&bytes, &scan).expect("rewrite");
        assert_eq!(
            stats.loop_checks, 1,
            "the loop with a call gets a yield check"
        );
        assert_eq!(stats.wrapped_loops, 1, "main's call-free loop is wrapped");
        assert_eq!(stats.leaf_loops, 1, "the leaf kernel's loop only polls");
        assert_eq!(stats.import_call_checks, 1);
        assert_eq!(stats.entry_checks, 1);
        Validator::new_with_features(accepted_features())
            .validate_all(&out)
            .expect("rewritten module validates");
        let imports = function_imports(&out).expect("imports");
        let roam: Vec<&str> = imports
            .iter()
            .filter(|(m, _)| m == "roam")
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(roam, vec!["yield", "poll"]);
    }

    #[test]
    fn flag_globals_become_a_flag_memory() {
        let wat = r#"(module
            (memory 1)
            (func $f (result i32) i32.const 1)
            (func (export "_start") (loop $l (br_if $l (i32.eqz (call $f))))))"#;
        let bytes = parse_module_bytes(wat.as_bytes()).expect("valid");
        let full = match instrument(&bytes, &InstrumentOptions::default()) {
            Ok(f) => f,
            Err(HostError::WasmOptMissing(p)) => panic!("wasm-opt missing at {}", p.display()),
            Err(e) => panic!("instrument: {e}"),
        };
        let mut flag_globals = Vec::new();
        let mut flag_loads = 0;
        let mut flag_global_reads = 0;
        for payload in wasmparser::Parser::new(0).parse_all(&full.bytes) {
            match payload.expect("payload") {
                Payload::ExportSection(s) => {
                    for e in s {
                        let e = e.expect("export");
                        if e.name == PAUSE_GLOBAL || e.name == POLL_GLOBAL {
                            flag_globals.push(e.index);
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    for op in body.get_operators_reader().expect("ops") {
                        match op.expect("op") {
                            Operator::I32Load8U { memarg } if memarg.memory == 1 => flag_loads += 1,
                            Operator::GlobalGet { global_index }
                                if flag_globals.contains(&global_index) =>
                            {
                                flag_global_reads += 1
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        assert_eq!(flag_globals.len(), 2);
        assert!(flag_loads >= 1, "the loop check reads the flag memory");
        assert_eq!(
            flag_global_reads, 0,
            "no check reads the flag globals any more"
        );
    }
}
