"""Sandboxed evaluation of diagram scripts and expressions.

Scripts, gateway conditions, DMN cells, timer expressions and service task
parameters come from analysts' diagrams and are untrusted.  SpiffWorkflow's
default ``PythonScriptEngine`` runs them with plain ``eval``/``exec``; this
module replaces it with a sandbox built on RestrictedPython:

* Compile time (``check_script`` / ``check_expression``, also run on every
  evaluation through a cache): RestrictedPython's ``RestrictingNodeTransformer``
  refuses names and attributes starting with ``_``; our subclass additionally
  refuses imports, classes, ``with``, ``finally``, bare ``except:``, computed
  ``except`` clauses, calls of introspection/IO builtins (``eval``, ``open``,
  ``type``, ``globals`` ...) and the ``format``/``format_map`` attributes, and it
  rewrites ``**``, ``*``, ``<<``, ``+``, ``%``, f-strings and ``*`` unpacking
  into calls of size-checking helpers.
* Run time: only vetted builtins and helper functions are in scope (no module
  objects); attribute access goes through a guard that only serves public
  attributes of plain data types (str, numbers, dates, containers); item
  assignment goes through a write guard; time, call depth and memory growth are
  bounded by a trace function plus a tick injected into every ``while`` loop;
  the task data left by a script must be plain, storable data of at most
  256 KiB; a failing script leaves the task data untouched.

Error messages (``SandboxError``) are meant to be shown to analysts and never
contain values from task data: only names, types, limits and line numbers (and
text that literally appears in the script itself).
"""
from __future__ import annotations

import ast
import builtins as _py_builtins
import calendar
import collections
import copy
import functools
import json
import keyword
import math
import operator
import re
import sys
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from RestrictedPython.Guards import (
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
)
from RestrictedPython.transformer import (
    IOPERATOR_TO_STR,
    RestrictingNodeTransformer,
    copy_locations,
)
from SpiffWorkflow.bpmn.exceptions import WorkflowTaskException
from SpiffWorkflow.bpmn.script_engine.python_engine import PythonScriptEngine
from SpiffWorkflow.bpmn.script_engine.python_environment import (
    BasePythonScriptEngineEnvironment,
)
from SpiffWorkflow.exceptions import SpiffWorkflowException

try:  # pragma: no cover - resource is POSIX only
    import resource as _resource
except ImportError:  # pragma: no cover
    _resource = None

__all__ = [
    'SandboxError',
    'ScriptRejected',
    'check_script',
    'check_expression',
    'SandboxedEnvironment',
    'SandboxedScriptEngine',
]

# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------

SCRIPT_FILENAME = '<diagram script>'
DEFAULT_TIME_LIMIT = 1.0
MAX_SOURCE_CHARS = 100_000          # longest script or expression accepted
MAX_INT_BITS = 4096                 # largest int an operator may produce
MAX_ITEMS = 100_000                 # longest list/tuple an operator may produce
MAX_STR = 100_000                   # longest str an operator may produce
MAX_FORMAT_NUMBER = 10_000          # largest width/precision in a format spec
MAX_FORMAT_SPEC = 200               # longest format spec
MAX_CALL_DEPTH = 50                 # nested frames of script code
MAX_DATA_BYTES = 256 * 1024         # task data after a script (JSON-ish size)
MAX_NESTING = 100                   # nesting of containers in task data
MAX_PRINT_CHARS = 10_000            # print() output kept per evaluation
MAX_MONTHS = 12 * 10_000            # add_months / iso_duration bounds
CHECK_EVERY = 16                    # line events / ticks between time checks


# --------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------

class SandboxError(Exception):
    """A script or expression was refused or failed inside the sandbox.

    The message is safe to show to an analyst: it never contains values from
    task data.  ``lineno`` is the line of the script where it happened, when
    known.
    """

    def __init__(self, message, lineno=None):
        super().__init__(message)
        self.message = message
        self.lineno = lineno

    def __str__(self):
        if self.lineno:
            return f'{self.message} (line {self.lineno})'
        return self.message


class ScriptRejected(SandboxError, SyntaxError):
    """A script or expression was refused at compile time.

    Also a ``SyntaxError`` so that code which probes expressions by catching
    SyntaxError (SpiffWorkflow's DMN engine does) keeps working.
    """

    def __init__(self, detail, lineno=None):
        SandboxError.__init__(self, detail, lineno)
        self.detail = detail
        self.msg = detail
        self.lineno = lineno
        self.filename = SCRIPT_FILENAME

    def __str__(self):
        if self.lineno:
            return f'line {self.lineno}: {self.detail}'
        return self.detail


class _ScriptValueError(SandboxError, ValueError):
    """Raised by helpers for bad values; scripts may catch it as ValueError."""


class _ScriptTypeError(SandboxError, TypeError):
    """Raised by helpers for bad argument types; catchable as TypeError."""


class _ScriptNameError(SandboxError, NameError):
    """An undefined name; keeps ``.name`` for SpiffWorkflow's suggestions."""

    def __init__(self, message, lineno=None, name=None):
        SandboxError.__init__(self, message, lineno)
        self.name = name


class _Abort(BaseException):
    """Raised by the resource guards when a limit is hit.

    Derives from BaseException and is not reachable from scripts, so scripts
    cannot catch it (bare ``except:``, ``finally`` and ``BaseException`` are
    not available to them).
    """

    def __init__(self, message, lineno=None):
        super().__init__(message)
        self.message = message
        self.lineno = lineno


def _too_big(what, limit, unit):
    return SandboxError(f'{what} would be too large (limit: {limit} {unit})')


# --------------------------------------------------------------------------
# Compile time
# --------------------------------------------------------------------------

# Calls of these names are refused outright: they reach code, namespaces or
# the outside world.  (They are not in scope at run time either.)
_FORBIDDEN_CALLS = frozenset({
    'eval', 'exec', 'compile', 'open', 'input', 'breakpoint', 'help',
    'globals', 'locals', 'vars', 'dir', 'type', 'object', 'super',
    'getattr', 'setattr', 'delattr', 'hasattr', 'memoryview', 'bytearray',
    'classmethod', 'staticmethod', 'property', 'exit', 'quit', 'format',
    'iter', 'aiter', 'anext', 'id', 'hash', 'license', 'credits',
    'copyright',
})

# Attribute names refused at compile time on any object.
_FORBIDDEN_ATTRIBUTES = frozenset({'format', 'format_map'})

_BINOP_HELPERS = {
    ast.Pow: '_guard_pow_',
    ast.Mult: '_guard_mul_',
    ast.LShift: '_guard_lshift_',
    ast.Add: '_guard_add_',
    ast.Mod: '_guard_mod_',
}


def _name(identifier):
    return ast.Name(identifier, ast.Load())


def _call(func_name, args, node, keywords=None):
    new = ast.Call(func=_name(func_name), args=list(args), keywords=keywords or [])
    copy_locations(new, node)
    copy_locations(new.func, node)
    return new


class SandboxTransformer(RestrictingNodeTransformer):
    """RestrictedPython's policy plus camins' extra refusals and rewrites."""

    # -- refusals ---------------------------------------------------------

    def visit_Import(self, node):
        self.error(node, 'import statements are not allowed.')
        return node

    def visit_ImportFrom(self, node):
        self.error(node, 'import statements are not allowed.')
        return node

    def visit_ClassDef(self, node):
        self.error(node, 'class definitions are not allowed.')
        return node

    def visit_With(self, node):
        self.error(node, "'with' statements are not allowed.")
        return node

    def visit_Try(self, node):
        if node.finalbody:
            self.error(node, "'finally' blocks are not allowed.")
        for handler in node.handlers:
            if handler.type is None:
                self.error(handler, "a bare 'except:' is not allowed; name the "
                                    "exception, e.g. 'except ValueError:'.")
            elif not self._is_plain_exception_spec(handler.type):
                self.error(handler, "'except' must name exception classes, "
                                    "e.g. 'except (KeyError, ValueError):'.")
        return super().visit_Try(node)

    @staticmethod
    def _is_plain_exception_spec(node):
        # Only names: evaluating the clause must not run script code while
        # an abort is unwinding the stack without tracing.
        if isinstance(node, ast.Name):
            return True
        if isinstance(node, ast.Tuple):
            return all(isinstance(elt, ast.Name) for elt in node.elts)
        return False

    def visit_Call(self, node):
        if isinstance(node.func, ast.Name) and node.func.id in _FORBIDDEN_CALLS:
            self.error(node, f"'{node.func.id}' is not available in scripts.")
        has_star = any(isinstance(arg, ast.Starred) for arg in node.args)
        node = super().visit_Call(node)
        if not has_star:
            return node
        # f(*a, *b): build the argument tuple with a size check first.
        if isinstance(node.func, ast.Name) and node.func.id == '_apply_':
            func, args = node.args[0], node.args[1:]
        else:
            func, args = node.func, node.args
        packed = self._display_call('tuple', args, node)
        return _call('_call_star_', [func, packed], node, keywords=node.keywords)

    def visit_Attribute(self, node):
        if node.attr in _FORBIDDEN_ATTRIBUTES:
            self.error(node, f"'.{node.attr}' is not available in scripts; "
                             "use f-strings instead.")
        return super().visit_Attribute(node)

    # -- size-guarded operators -----------------------------------------

    def visit_BinOp(self, node):
        node = super().visit_BinOp(node)
        helper = _BINOP_HELPERS.get(type(node.op))
        if helper is None:
            return node
        return _call(helper, [node.left, node.right], node)

    def visit_AugAssign(self, node):
        if not isinstance(node.target, ast.Subscript):
            # Names become 'n = _inplacevar_(op, n, v)' (RestrictedPython);
            # attributes are refused by RestrictedPython.
            return super().visit_AugAssign(node)
        target = node.target
        if any(isinstance(n, ast.Slice) for n in ast.walk(target.slice)):
            self.error(node, 'augmented assignment to slices is not allowed.')
            return node
        container = self.visit(target.value)
        key = self.visit(target.slice)
        value = self.visit(node.value)
        op = ast.Constant(IOPERATOR_TO_STR[type(node.op)])
        copy_locations(op, node)
        new = ast.Expr(_call('_aug_item_', [container, key, op, value], node))
        copy_locations(new, node)
        return new

    # -- string building ------------------------------------------------

    def visit_FormattedValue(self, node):
        value = self.visit(node.value)
        if node.format_spec is not None:
            spec = self.visit(node.format_spec)
        else:
            spec = ast.Constant(None)
            copy_locations(spec, node)
        conversion = ast.Constant(node.conversion)
        copy_locations(conversion, node)
        new = ast.FormattedValue(
            value=_call('_fmt_', [value, conversion, spec], node),
            conversion=-1,
            format_spec=None)
        copy_locations(new, node)
        return new

    def visit_JoinedStr(self, node):
        node = super().visit_JoinedStr(node)
        return _call('_check_str_', [node], node)

    # -- unpacking displays ---------------------------------------------

    def _display_call(self, kind, elts, node):
        parts = []
        for elt in elts:
            if isinstance(elt, ast.Starred):
                flag, value = True, elt.value
            else:
                flag, value = False, elt
            flag_node = ast.Constant(flag)
            copy_locations(flag_node, node)
            pair = ast.Tuple([flag_node, value], ast.Load())
            copy_locations(pair, node)
            parts.append(pair)
        tup = ast.Tuple(parts, ast.Load())
        copy_locations(tup, node)
        kind_node = ast.Constant(kind)
        copy_locations(kind_node, node)
        return _call('_display_', [kind_node, tup], node)

    def _visit_display(self, node, kind):
        node = self.node_contents_visit(node)
        ctx = getattr(node, 'ctx', None)
        if isinstance(ctx, (ast.Store, ast.Del)):
            return node
        if not any(isinstance(elt, ast.Starred) for elt in node.elts):
            return node
        return self._display_call(kind, node.elts, node)

    def visit_List(self, node):
        return self._visit_display(node, 'list')

    def visit_Tuple(self, node):
        return self._visit_display(node, 'tuple')

    def visit_Set(self, node):
        return self._visit_display(node, 'set')

    # -- loops ----------------------------------------------------------

    def visit_While(self, node):
        # CPython 3.11 emits no trace events for some tight loops
        # ('while True: pass'), so every while loop also ticks explicitly.
        node = super().visit_While(node)
        tick = ast.Expr(_call('_tick_', [], node))
        copy_locations(tick, node)
        node.body.insert(0, tick)
        return node

    # -- roots ----------------------------------------------------------

    def visit_Module(self, node):
        node = super().visit_Module(node)
        ast.fix_missing_locations(node)
        return node

    def visit_Expression(self, node):
        node = super().visit_Expression(node)
        ast.fix_missing_locations(node)
        return node


_ERROR_LINE = re.compile(r'^Line (\d+|None): (.*)$', re.DOTALL)


@functools.lru_cache(maxsize=4096)
def _compile_cached(source, mode):
    """Compile ``source``; returns (code, None) or (None, (lineno, detail))."""
    if len(source) > MAX_SOURCE_CHARS:
        return None, (None, f'the script is too long (limit: {MAX_SOURCE_CHARS} characters).')
    try:
        tree = ast.parse(source, SCRIPT_FILENAME, mode)
    except SyntaxError as err:
        return None, (err.lineno, f'syntax error: {err.msg}.')
    except (ValueError, MemoryError, RecursionError):
        return None, (None, 'the script cannot be parsed.')
    # What RestrictedPython's compile_restricted_{exec,eval} do, done here so
    # that the already parsed tree is accepted by every supported version.
    errors, warnings, used_names = [], [], {}
    try:
        SandboxTransformer(errors, warnings, used_names).visit(tree)
        code = None if errors else compile(tree, SCRIPT_FILENAME, mode)
    except (ValueError, TypeError, MemoryError, RecursionError, SyntaxError):
        return None, (None, 'the script cannot be compiled.')
    if errors:
        match = _ERROR_LINE.match(errors[0])
        if match:
            lineno = None if match.group(1) == 'None' else int(match.group(1))
            return None, (lineno, match.group(2))
        return None, (None, errors[0])
    return code, None


def _compile(source, mode):
    if not isinstance(source, str):
        raise ScriptRejected('a script or expression must be text.')
    code, error = _compile_cached(source, mode)
    if error is not None:
        raise ScriptRejected(error[1], lineno=error[0])
    return code


def check_script(source: str) -> None:
    """Compile-check a script (exec mode); raises ScriptRejected."""
    _compile(source, 'exec')


def check_expression(source: str) -> None:
    """Compile-check an expression (eval mode); raises ScriptRejected."""
    _compile(source, 'eval')


# --------------------------------------------------------------------------
# Size estimates
# --------------------------------------------------------------------------

_NoneType = type(None)
_SCALAR_REPR_SIZE = {
    _NoneType: 4, bool: 5, float: 24, complex: 50, date: 28, datetime: 80,
    timedelta: 60, UUID: 44, Decimal: 60, range: 40, slice: 60,
}
_VIEW_TYPES = (type({}.keys()), type({}.values()), type({}.items()))


def _repr_size(obj, budget, depth_limit=200):
    """Rough size of ``repr(obj)``; raises SandboxError beyond ``budget``.

    Shared references are counted every time (as repr prints them), so the
    cost is bounded by ``budget`` whatever the object graph looks like.
    """
    size = 0
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is str:
            size += len(value) + 2
        elif kind is int:
            size += value.bit_length() // 3 + 2
        elif kind in _SCALAR_REPR_SIZE:
            size += _SCALAR_REPR_SIZE[kind]
        elif isinstance(value, (str, bytes)):
            size += len(value) + 3
        elif isinstance(value, (list, tuple, set, frozenset, dict) + _VIEW_TYPES) \
                or isinstance(value, BaseException):
            if depth >= depth_limit:
                raise SandboxError('value is nested too deeply to be turned into text')
            if isinstance(value, BaseException):
                items = value.args
                size += len(kind.__name__) + 2
            elif isinstance(value, dict):
                size += 2 + 4 * len(value)
                if size > budget:
                    break
                items = [part for pair in value.items() for part in pair]
            else:
                items = value
                size += 2 + 2 * len(value)
            if size > budget:
                break
            stack.extend((item, depth + 1) for item in items)
        else:
            size += 100  # generic '<function f at 0x...>' style repr
        if size > budget:
            break
    if size > budget:
        raise _too_big('text', budget, 'characters')
    return size


_PLAIN_SCALARS = {
    _NoneType: 4, bool: 5, float: 24, date: 12, datetime: 34, timedelta: 40,
    UUID: 38, Decimal: 40,
}
_KEY_TYPES = (str, int, float, bool, _NoneType)


class _DataMeter:
    """Measures plain, storable data (JSON-like plus dates and decimals)."""

    def __init__(self, limit, allow_sets=False):
        self.limit = limit
        self.allow_sets = allow_sets
        self.size = 0

    def add_lenient(self, obj, where):
        """Counts data the script could not touch, whatever its types."""
        try:
            self.size += _repr_size(obj, self.limit - self.size + 1)
        except SandboxError:
            self.size = self.limit + 1
        if self.size > self.limit:
            raise SandboxError(f'{where} would make the data too large '
                               f'(limit: {self.limit // 1024} KiB)')

    def add(self, obj, where):
        stack = [(obj, 0)]
        limit = self.limit
        while stack:
            value, depth = stack.pop()
            kind = type(value)
            if kind is str:
                self.size += len(value) + 2
            elif kind is int:
                self.size += value.bit_length() // 3 + 2
            elif kind in _PLAIN_SCALARS:
                self.size += _PLAIN_SCALARS[kind]
            elif isinstance(value, (dict, list, tuple)) or (
                    self.allow_sets and isinstance(value, (set, frozenset))):
                if depth >= MAX_NESTING:
                    raise SandboxError(f'{where} is nested too deeply '
                                       f'(limit: {MAX_NESTING} levels)')
                if isinstance(value, dict):
                    self.size += 2 + 2 * len(value)
                    if self.size > limit:
                        break
                    for key, item in value.items():
                        if not isinstance(key, _KEY_TYPES):
                            raise SandboxError(
                                f'{where} has a dictionary key of type '
                                f'{type(key).__name__}; keys must be text or numbers')
                        self.size += len(key) + 2 if isinstance(key, str) else 8
                        stack.append((item, depth + 1))
                else:
                    self.size += 2 + len(value)
                    if self.size > limit:
                        break
                    stack.extend((item, depth + 1) for item in value)
            elif isinstance(value, str):
                self.size += len(value) + 2
            elif isinstance(value, (int, float)):
                self.size += 24 if isinstance(value, float) else value.bit_length() // 3 + 2
            elif isinstance(value, (datetime, date, timedelta, Decimal, UUID)):
                self.size += 40
            else:
                hint = '; convert it with list(...)' if isinstance(value, (set, frozenset)) else ''
                raise SandboxError(f'{where} holds a value of type {kind.__name__}, '
                                   f'which cannot be stored{hint}')
            if self.size > limit:
                break
        if self.size > limit:
            raise SandboxError(f'{where} would make the data too large '
                               f'(limit: {limit // 1024} KiB)')


# --------------------------------------------------------------------------
# Guarded operators (the transformer rewrites operators into these)
# --------------------------------------------------------------------------

_SEQ_LIMITS = ((str, MAX_STR, 'characters'), (bytes, MAX_STR, 'bytes'),
               (list, MAX_ITEMS, 'items'), (tuple, MAX_ITEMS, 'items'))


def _seq_limit(value):
    for kind, limit, unit in _SEQ_LIMITS:
        if isinstance(value, kind):
            return limit, unit
    return None


def _check_int_bits(bits, what):
    if bits > MAX_INT_BITS:
        raise _too_big(f'the result of {what}', MAX_INT_BITS, 'bits')


def _guard_add(a, b):
    if isinstance(a, int) and isinstance(b, int):
        if a.bit_length() > MAX_INT_BITS or b.bit_length() > MAX_INT_BITS:
            raise _too_big("the result of '+'", MAX_INT_BITS, 'bits')
        return a + b
    limit = _seq_limit(a)
    if limit is not None and _seq_limit(b) is not None:
        if len(a) + len(b) > limit[0]:
            raise _too_big("the result of '+'", *limit)
    return a + b


def _check_repeat(seq, count):
    limit = _seq_limit(seq)
    if limit is not None and count > 0 and len(seq) * count > limit[0]:
        raise _too_big("the result of '*'", *limit)


def _guard_mul(a, b):
    if isinstance(a, int) and isinstance(b, int):
        if a and b:
            _check_int_bits(a.bit_length() + b.bit_length() - 1, "'*'")
        return a * b
    if isinstance(b, int):
        _check_repeat(a, b)
    elif isinstance(a, int):
        _check_repeat(b, a)
    return a * b


def _check_pow(a, b):
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1:
        if b.bit_length() > 32:
            raise _too_big("the result of '**'", MAX_INT_BITS, 'bits')
        _check_int_bits(b * math.log2(abs(a)), "'**'")


def _guard_pow(a, b):
    _check_pow(a, b)
    return a ** b


def _safe_pow(base, exp, mod=None):
    if mod is None:
        return _guard_pow(base, exp)
    for value in (base, exp, mod):
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise _too_big('an argument of pow()', MAX_INT_BITS, 'bits')
    return pow(base, exp, mod)


def _guard_lshift(a, b):
    if isinstance(a, int) and isinstance(b, int) and a and b > 0:
        _check_int_bits(a.bit_length() + b, "'<<'")
    return a << b


_FORMAT_NUMBERS = re.compile(r'\d+')


def _check_format_numbers(text, what):
    total = 0
    for digits in _FORMAT_NUMBERS.findall(text):
        if len(digits) > 6 or int(digits) > MAX_FORMAT_NUMBER:
            raise SandboxError(f'a width or precision in {what} is too large '
                               f'(limit: {MAX_FORMAT_NUMBER})')
        total += int(digits)
    return total


def _check_decimal_for_int(value, what):
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() > 1200:
        raise _too_big(what, MAX_INT_BITS, 'bits')


def _guard_mod(a, b):
    if not isinstance(a, (str, bytes)):
        return a % b
    fmt = a
    if re.search(r'%[^a-zA-Z%]*\*', fmt if isinstance(fmt, str) else fmt.decode('latin-1')):
        raise SandboxError("'*' widths are not allowed in % formatting")
    widths = _check_format_numbers(fmt if isinstance(fmt, str) else fmt.decode('latin-1'),
                                   '% formatting')
    if isinstance(b, tuple):
        values = list(b)
    elif isinstance(b, dict):
        values = [b, *b.values()]
    else:
        values = [b]
    largest = 0
    for value in values:
        _check_decimal_for_int(value, "a number in '%' formatting")
        largest = max(largest, _repr_size(value, MAX_STR))
    if len(fmt) + widths + fmt.count('%') * largest > MAX_STR:
        raise _too_big("the result of '%' formatting", MAX_STR, 'characters')
    return a % b


def _guard_inplace(op, x, y):
    if op == '+=':
        _guard_add_check_inplace(x, y)
        return operator.iadd(x, y)
    if op == '*=':
        if isinstance(x, int) and isinstance(y, int):
            return _guard_mul(x, y)
        if isinstance(y, int):
            _check_repeat(x, y)
        return operator.imul(x, y)
    if op == '**=':
        _check_pow(x, y)
        return operator.ipow(x, y)
    if op == '<<=':
        return _guard_lshift(x, y)
    if op == '%=':
        return _guard_mod(x, y)
    func = _INPLACE_OPS.get(op)
    if func is None:
        raise SandboxError(f"operator '{op}' is not supported")
    return func(x, y)


def _guard_add_check_inplace(x, y):
    if isinstance(x, int) and isinstance(y, int):
        if x.bit_length() > MAX_INT_BITS or y.bit_length() > MAX_INT_BITS:
            raise _too_big("the result of '+='", MAX_INT_BITS, 'bits')
        return
    limit = _seq_limit(x)
    if limit is None:
        return
    try:
        extra = len(y)
    except TypeError:
        return  # list += generator: consumed one item at a time, traced
    if len(x) + extra > limit[0]:
        raise _too_big("the result of '+='", *limit)


_INPLACE_OPS = {
    '-=': operator.isub, '/=': operator.itruediv, '//=': operator.ifloordiv,
    '>>=': operator.irshift, '|=': operator.ior, '&=': operator.iand,
    '^=': operator.ixor, '@=': operator.imatmul,
}


def _sized(value):
    try:
        return value, len(value)
    except TypeError:
        value = list(value)
        return value, len(value)


def _display(kind, parts):
    total = 0
    pieces = []
    for starred, value in parts:
        if starred:
            value, count = _sized(value)
            total += count
        else:
            total += 1
        if total > MAX_ITEMS:
            raise _too_big('the unpacked sequence', MAX_ITEMS, 'items')
        pieces.append((starred, value))
    result = []
    for starred, value in pieces:
        if starred:
            result.extend(value)
        else:
            result.append(value)
    if kind == 'tuple':
        return tuple(result)
    if kind == 'set':
        return set(result)
    return result


def _call_star(func, args, /, **kwargs):
    return func(*args, **kwargs)


def _apply(func, /, *args, **kwargs):
    return func(*args, **kwargs)


def _check_str(text):
    if len(text) > MAX_STR:
        raise _too_big('the text', MAX_STR, 'characters')
    return text


_TEXT_SAFE_TYPES = (str, int, float, bool, _NoneType, date, datetime, timedelta, UUID)


def _safe_str(value=''):
    kind = type(value)
    if kind is str:
        return value
    if kind in _TEXT_SAFE_TYPES or isinstance(value, Decimal):
        return _check_str(str(value))
    _repr_size(value, MAX_STR)
    return _check_str(str(value))


def _safe_repr(value):
    if type(value) is str:
        _check_str(value)
    else:
        _repr_size(value, MAX_STR)
    return _check_str(repr(value))


def _fmt(value, conversion, spec):
    """Formats one f-string field after checking the result's size."""
    if conversion == 115:    # !s
        value = _safe_str(value)
    elif conversion == 114:  # !r
        value = _safe_repr(value)
    elif conversion == 97:   # !a
        _safe_repr(value)
        value = _check_str(ascii(value))
    if spec is None or spec == '':
        return _safe_str(value)
    if not isinstance(spec, str) or len(spec) > MAX_FORMAT_SPEC:
        raise SandboxError(f'format specifications are limited to {MAX_FORMAT_SPEC} characters')
    _check_format_numbers(spec, 'an f-string')
    if isinstance(value, Decimal) and value.is_finite() and abs(value.adjusted()) > 1000:
        raise _too_big('the formatted number', MAX_STR, 'characters')
    if isinstance(value, str):
        _check_str(value)
    elif not isinstance(value, _TEXT_SAFE_TYPES + (Decimal,)):
        _repr_size(value, MAX_STR)
    return _check_str(format(value, spec))


# --------------------------------------------------------------------------
# Guarded builtins
# --------------------------------------------------------------------------

class _GuardedType(type):
    """Metaclass for stand-ins of builtin types whose constructor is guarded.

    ``isinstance(x, str)`` keeps working while ``str(x)`` goes through a size
    check.  The stand-in exposes no attributes to scripts (its type is not on
    the attribute allowlist).
    """

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls._real)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, cls._real)

    def __call__(cls, *args, **kwargs):
        return cls._construct(*args, **kwargs)

    def __repr__(cls):
        return f"<class '{cls._real.__name__}'>"


def _str_construct(*args, **kwargs):
    obj = args[0] if args else kwargs.get('object', '')
    if len(args) > 1 or 'encoding' in kwargs or 'errors' in kwargs:
        if not isinstance(obj, (bytes, bytearray)):
            raise _ScriptTypeError('str() with an encoding needs bytes')
        return _check_str(str(*args, **kwargs))  # decoding: bounded by the input
    if len(args) + len(kwargs) > 1 or (kwargs and 'object' not in kwargs):
        raise _ScriptTypeError('str() takes one value')
    return _safe_str(obj)


def _int_construct(*args, **kwargs):
    if args:
        first = args[0]
        if isinstance(first, (str, bytes)) and len(first) > 5000:
            raise SandboxError('int() accepts at most 5000 digits')
        _check_decimal_for_int(first, 'int()')
    return int(*args, **kwargs)


str_guarded = _GuardedType('str', (), {'_real': str, '_construct': staticmethod(_str_construct)})
int_guarded = _GuardedType('int', (), {'_real': int, '_construct': staticmethod(_int_construct)})


def _safe_round(number, ndigits=None):
    if ndigits is None:
        _check_decimal_for_int(number, 'round()')
        return round(number)
    if isinstance(ndigits, int) and abs(ndigits) > 1000:
        raise SandboxError('round() accepts at most 1000 digits')
    return round(number, ndigits)


def _safe_range(*args):
    result = range(*args)
    try:
        count = len(result)
    except OverflowError:
        count = MAX_ITEMS + 1
    if count > MAX_ITEMS:
        raise _too_big('range()', MAX_ITEMS, 'items')
    return result


_SUM_STARTS = (int, float, Decimal, timedelta)


def _safe_sum(iterable, /, start=0):
    if not isinstance(start, _SUM_STARTS):
        raise SandboxError('sum() only adds numbers or durations; use a comprehension '
                           'to join lists')
    return sum(iterable, start)


class _PrintCollector:
    """Target of ``print`` in scripts: keeps a bounded amount of text, unused."""

    def __init__(self, _getattr=None):
        self.parts = []
        self.size = 0

    def _call_print(self, *objects, sep=' ', end='\n', **_ignored):
        if self.size >= MAX_PRINT_CHARS:
            return
        sep = ' ' if sep is None else _safe_str(sep)
        end = '\n' if end is None else _safe_str(end)
        text = sep.join(_safe_str(obj) for obj in objects) + end
        text = text[:MAX_PRINT_CHARS - self.size]
        self.parts.append(text)
        self.size += len(text)

    def __call__(self):
        return ''.join(self.parts)


# -- attribute guard -----------------------------------------------------

def _str_join(text):
    def join(iterable):
        items, count = _sized(iterable)
        total = len(text) * max(count - 1, 0)
        for item in items:
            if isinstance(item, str):
                total += len(item)
            if total > MAX_STR:
                raise _too_big('the joined text', MAX_STR, 'characters')
        return text.join(items)
    return join


def _str_replace(text):
    def replace(old, new, count=-1):
        if isinstance(old, str) and isinstance(new, str) and isinstance(count, int):
            hits = text.count(old) if old else len(text) + 1
            if count >= 0:
                hits = min(hits, count)
            if len(text) + hits * (len(new) - len(old)) > MAX_STR:
                raise _too_big('the replaced text', MAX_STR, 'characters')
        return text.replace(old, new, count)
    return replace


def _str_width(method_name):
    def factory(text):
        method = getattr(text, method_name)

        def padded(width, *args):
            if isinstance(width, int) and width > MAX_STR:
                raise _too_big(f'the result of {method_name}()', MAX_STR, 'characters')
            return method(width, *args)
        return padded
    return factory


def _str_expandtabs(text):
    def expandtabs(tabsize=8):
        if isinstance(tabsize, int) and len(text) + text.count('\t') * max(tabsize, 0) > MAX_STR:
            raise _too_big('the result of expandtabs()', MAX_STR, 'characters')
        return text.expandtabs(tabsize)
    return expandtabs


def _str_translate(text):
    def translate(table):
        if not isinstance(table, dict):
            raise SandboxError('translate() needs a table made by str.maketrans')
        longest = max((len(v) for v in table.values() if isinstance(v, str)), default=1)
        if len(text) * max(longest, 1) > MAX_STR:
            raise _too_big('the translated text', MAX_STR, 'characters')
        return text.translate(table)
    return translate


def _list_extend(target):
    def extend(iterable):
        items, count = _sized(iterable)
        if len(target) + count > MAX_ITEMS:
            raise _too_big('the extended list', MAX_ITEMS, 'items')
        target.extend(items)
    return extend


_DATE_BLOCKED = frozenset({'now', 'today', 'utcnow', 'fromtimestamp', 'utcfromtimestamp'})
_LIST_MUTATORS = frozenset({'append', 'extend', 'insert', 'pop', 'remove', 'clear',
                            'sort', 'reverse'})
_DICT_MUTATORS = frozenset({'pop', 'popitem', 'clear', 'update', 'setdefault'})
_SET_MUTATORS = frozenset({'add', 'discard', 'remove', 'pop', 'clear', 'update',
                           'difference_update', 'intersection_update',
                           'symmetric_difference_update'})


class _AttrRule:
    __slots__ = ('blocked', 'wrappers', 'mutators')

    def __init__(self, blocked=(), wrappers=None, mutators=()):
        self.blocked = frozenset(blocked)
        self.wrappers = wrappers or {}
        self.mutators = frozenset(mutators)


_STR_RULE = _AttrRule(
    blocked={'format', 'format_map'},
    wrappers={
        'join': _str_join, 'replace': _str_replace, 'expandtabs': _str_expandtabs,
        'translate': _str_translate, 'center': _str_width('center'),
        'ljust': _str_width('ljust'), 'rjust': _str_width('rjust'),
        'zfill': _str_width('zfill'),
    })
_INT_RULE = _AttrRule(blocked={'to_bytes'})
_DATE_RULE = _AttrRule(blocked=_DATE_BLOCKED)
_DICT_RULE = _AttrRule(mutators=_DICT_MUTATORS)

# Attribute access is served only for objects of exactly these types.
_ATTR_RULES = {
    str: _STR_RULE,
    int: _INT_RULE,
    bool: _INT_RULE,
    float: _AttrRule(),
    Decimal: _AttrRule(),
    date: _DATE_RULE,
    datetime: _DATE_RULE,
    timedelta: _AttrRule(),
    list: _AttrRule(wrappers={'extend': _list_extend}, mutators=_LIST_MUTATORS),
    tuple: _AttrRule(),
    dict: _DICT_RULE,
    collections.OrderedDict: _AttrRule(mutators=_DICT_MUTATORS | {'move_to_end'}),
    set: _AttrRule(mutators=_SET_MUTATORS),
    frozenset: _AttrRule(),
}


def _make_getattr(read_only):
    rules = _ATTR_RULES

    def guarded_getattr(obj, name):
        if not isinstance(name, str) or name.startswith('_'):
            raise SandboxError('attributes starting with "_" are not available')
        rule = rules.get(type(obj))
        if rule is None:
            what = 'types' if isinstance(obj, type) else f'{type(obj).__name__} objects'
            raise SandboxError(f"attribute '{name}' of {what} is not available in scripts")
        if name in rule.blocked:
            raise SandboxError(f"'{type(obj).__name__}.{name}' is not available in scripts")
        if read_only and name in rule.mutators:
            raise SandboxError(f"'{type(obj).__name__}.{name}()' changes data and is "
                               "not available in expressions; use a script task")
        value = getattr(obj, name)
        wrapper = rule.wrappers.get(name)
        if wrapper is not None:
            return wrapper(obj)
        return value
    return guarded_getattr


_guarded_getattr = _make_getattr(read_only=False)
_guarded_getattr_ro = _make_getattr(read_only=True)


def _guarded_getitem(obj, key):
    return obj[key]


class _ListWriter:
    """Write proxy for lists: slice assignment may not grow them unboundedly."""
    __slots__ = ('_target',)

    def __init__(self, target):
        self._target = target

    def __setitem__(self, key, value):
        if isinstance(key, slice):
            value, count = _sized(value)
            if len(self._target) + count > MAX_ITEMS:
                raise _too_big('the list', MAX_ITEMS, 'items')
        self._target[key] = value

    def __delitem__(self, key):
        del self._target[key]


_WRITABLE_MAPPINGS = (dict, collections.OrderedDict)


def _guarded_write(obj):
    kind = type(obj)
    if kind in _WRITABLE_MAPPINGS:
        return obj
    if kind is list:
        return _ListWriter(obj)
    raise SandboxError(f'items of {kind.__name__} objects cannot be assigned in scripts')


def _write_refused(obj):
    raise SandboxError('expressions cannot change data; use a script task')


def _aug_item(container, key, op, value):
    current = _guarded_getitem(container, key)
    _guarded_write(container)[key] = _guard_inplace(op, current, value)


# -- helper functions (vetted, in every script and expression) ------------

def _as_date(value, what):
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        return parse_date(value)
    raise _ScriptTypeError(f'{what} must be a date or an ISO 8601 date text')


def parse_date(text):
    """Reads an ISO 8601 date ('2024-05-31', or a date-time) into a date."""
    if isinstance(text, datetime):
        return text.date()
    if isinstance(text, date):
        return text
    if not isinstance(text, str):
        raise _ScriptTypeError('parse_date() expects ISO 8601 text like "2024-05-31"')
    text = text.strip()
    if len(text) <= 64:
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(text).date()
        except ValueError:
            pass
    raise _ScriptValueError('parse_date() expects ISO 8601 text like "2024-05-31"')


def add_months(value, months):
    """Adds whole months, clamping the day to the end of the month."""
    if not isinstance(months, int) or isinstance(months, bool) or abs(months) > MAX_MONTHS:
        raise _ScriptValueError(f'add_months() expects a whole number of months '
                                f'(at most {MAX_MONTHS})')
    if isinstance(value, str):
        value = parse_date(value)
    if not isinstance(value, date):
        raise _ScriptTypeError('add_months() expects a date')
    index = value.year * 12 + (value.month - 1) + months
    year, month0 = divmod(index, 12)
    if not 1 <= year <= 9999:
        raise _ScriptValueError('add_months(): the result is out of the supported date range')
    day = min(value.day, calendar.monthrange(year, month0 + 1)[1])
    return value.replace(year=year, month=month0 + 1, day=day)


def days_between(start, end):
    """Calendar days from ``start`` to ``end`` (negative if end is earlier)."""
    return (_as_date(end, 'days_between() end') - _as_date(start, 'days_between() start')).days


def iso_duration(*, years=0, months=0, weeks=0, days=0, hours=0, minutes=0, seconds=0):
    """Builds an ISO 8601 duration such as 'P20D' or 'P1M2DT3H'."""
    parts = {'years': years, 'months': months, 'weeks': weeks, 'days': days,
             'hours': hours, 'minutes': minutes, 'seconds': seconds}
    for name, value in parts.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10_000_000:
            raise _ScriptValueError(f'iso_duration(): {name} must be a whole number '
                                    'between 0 and 10000000')
    days = days + 7 * weeks
    text = 'P'
    for amount, unit in ((years, 'Y'), (months, 'M'), (days, 'D')):
        if amount:
            text += f'{amount}{unit}'
    clock = ''
    for amount, unit in ((hours, 'H'), (minutes, 'M'), (seconds, 'S')):
        if amount:
            clock += f'{amount}{unit}'
    if clock:
        text += 'T' + clock
    return text if text != 'P' else 'P0D'


def _utc_now():
    return datetime.now(UTC)


def _make_helpers(now_fn):
    def now():
        """The current date and time (UTC, timezone-aware)."""
        return now_fn()

    def today():
        """Today's date (UTC)."""
        return now_fn().date()

    def age_in_years(birth_date, on_date=None):
        """Whole years from ``birth_date`` to ``on_date`` (default: today)."""
        born = _as_date(birth_date, 'age_in_years() birth_date')
        on = today() if on_date is None else _as_date(on_date, 'age_in_years() on_date')
        return on.year - born.year - ((on.month, on.day) < (born.month, born.day))

    return {
        'now': now,
        'today': today,
        'date': date,
        'timedelta': timedelta,
        'parse_date': parse_date,
        'age_in_years': age_in_years,
        'add_months': add_months,
        'days_between': days_between,
        'iso_duration': iso_duration,
    }


# -- builtins ------------------------------------------------------------

_REMOVED_SAFE_BUILTINS = {
    '__build_class__', 'setattr', 'delattr', 'id', 'hash', 'complex',
    # exceptions scripts could use to catch the sandbox's own abort
    'BaseException', 'SystemExit', 'KeyboardInterrupt', 'GeneratorExit',
}


# Some C functions import a module through the builtins of the running frame
# (date.strftime imports 'time', datetime.strptime imports '_strptime').  Scripts
# cannot name '__import__' (names starting with '_' are refused), so this
# importer is only reachable by such internals, and only for these modules.
_INTERNAL_IMPORTS = frozenset({'time', '_strptime', 'locale', 'calendar'})


def _internal_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name in _INTERNAL_IMPORTS:
        return _py_builtins.__import__(name, globals, locals, fromlist, level)
    raise ImportError('imports are not available in scripts')


def _base_builtins():
    names = {k: v for k, v in safe_builtins.items() if k not in _REMOVED_SAFE_BUILTINS}
    for name in ('len', 'min', 'max', 'abs', 'sorted', 'any', 'all', 'float',
                 'bool', 'list', 'dict', 'set', 'tuple', 'enumerate', 'zip',
                 'isinstance', 'divmod', 'chr', 'ord', 'callable', 'issubclass',
                 'slice', 'hex', 'oct', 'next'):
        names[name] = getattr(_py_builtins, name)
    names.update({
        'True': True, 'False': False, 'None': None,
        'str': str_guarded, 'int': int_guarded, 'repr': _safe_repr,
        'round': _safe_round, 'range': _safe_range, 'sum': _safe_sum,
        'pow': _safe_pow,
        '__import__': _internal_import,
    })
    return names


_BASE_BUILTINS = _base_builtins()

_GUARDS = {
    '_getiter_': iter,
    '_iter_unpack_sequence_': guarded_iter_unpack_sequence,
    '_unpack_sequence_': guarded_unpack_sequence,
    '_getitem_': _guarded_getitem,
    '_apply_': _apply,
    '_call_star_': _call_star,
    '_display_': _display,
    '_inplacevar_': _guard_inplace,
    '_aug_item_': _aug_item,
    '_guard_pow_': _guard_pow,
    '_guard_mul_': _guard_mul,
    '_guard_lshift_': _guard_lshift,
    '_guard_add_': _guard_add,
    '_guard_mod_': _guard_mod,
    '_fmt_': _fmt,
    '_check_str_': _check_str,
    '_print_': _PrintCollector,
}


# --------------------------------------------------------------------------
# Resource budget
# --------------------------------------------------------------------------

def _max_rss_bytes():
    if _resource is None:
        return 0
    rss = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == 'darwin' else rss * 1024


class _Budget:
    """Time, call depth and memory growth limits of one evaluation."""

    __slots__ = ('time_limit', 'deadline', 'depth', 'count', 'rss_start', 'memory_limit')

    def __init__(self, time_limit, memory_limit):
        self.time_limit = time_limit
        self.deadline = time.monotonic() + time_limit
        self.depth = 0
        self.count = 0
        self.memory_limit = memory_limit
        self.rss_start = _max_rss_bytes() if memory_limit else 0

    def trace(self, frame, event, arg):
        """Global trace function: only frames of script code are followed."""
        if frame.f_code.co_filename != SCRIPT_FILENAME:
            return None
        self.depth += 1
        if self.depth > MAX_CALL_DEPTH:
            raise _Abort(f'functions are nested too deeply (limit: {MAX_CALL_DEPTH} calls)',
                         frame.f_lineno)
        self.step(frame)
        return self.local

    def local(self, frame, event, arg):
        if event == 'line':
            self.step(frame)
        elif event == 'return':
            self.depth -= 1
        return self.local

    def step(self, frame=None):
        self.count += 1
        if self.count % CHECK_EVERY:
            return
        if time.monotonic() > self.deadline:
            raise _Abort(f'the time limit of {self.time_limit:g} s was exceeded',
                         frame.f_lineno if frame is not None else None)
        if self.memory_limit:
            if _max_rss_bytes() - self.rss_start > self.memory_limit:
                raise _Abort(f'the memory limit of {self.memory_limit // 2**20} MiB '
                             'was exceeded', frame.f_lineno if frame is not None else None)

    def tick(self):
        """Called at the top of every while-loop iteration."""
        self.step(sys._getframe(1))


# --------------------------------------------------------------------------
# Error reporting
# --------------------------------------------------------------------------

def _script_lineno(tb):
    lineno = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == SCRIPT_FILENAME:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return lineno


# Exceptions whose messages only hold type names or fixed text.
_SAFE_MESSAGE_TYPES = (ZeroDivisionError, OverflowError, RecursionError, TypeError,
                       IndexError, StopIteration, UnboundLocalError)


def _describe(err, source, lineno):
    """Turns an exception from a script into a SandboxError without data values."""
    kind = type(err).__name__
    if isinstance(err, NameError) and not isinstance(err, UnboundLocalError):
        name = getattr(err, 'name', None)
        if isinstance(name, str) and name in source:
            return _ScriptNameError(f"name '{name}' is not defined", lineno, name=name)
        return _ScriptNameError('NameError', lineno)
    if isinstance(err, AttributeError):
        name = getattr(err, 'name', None)
        if isinstance(name, str) and name in source:
            target = type(getattr(err, 'obj', None)).__name__
            return SandboxError(f"{target} objects have no attribute '{name}'", lineno)
        return SandboxError(kind, lineno)
    try:
        _repr_size(err.args, 1000)  # str() of huge arguments would be costly
        text = str(err)
    except Exception:
        text = ''
    if len(text) > 300:
        text = ''
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        key = err.args[0]
        text = repr(key) if key and (repr(key) in source) else ''
    elif not isinstance(err, _SAFE_MESSAGE_TYPES) and text and text not in source:
        # The message might quote task data; show it only when it is text
        # written in the script itself (e.g. raise ValueError('bad amount')).
        text = ''
    return SandboxError(f'{kind}: {text}' if text else kind, lineno)


# --------------------------------------------------------------------------
# Environment and engine
# --------------------------------------------------------------------------

def _visible(key):
    """Task data keys that scripts can see and assign (plain identifiers)."""
    return (isinstance(key, str) and key.isidentifier() and not key.startswith('_')
            and not keyword.iskeyword(key))


class SandboxedEnvironment(BasePythonScriptEngineEnvironment):
    """A SpiffWorkflow script environment that runs code in the sandbox."""

    # Growth of the process's peak memory tolerated during one evaluation
    # (None disables the check).  Class attribute so deployments can tune it.
    memory_limit = 512 * 2**20

    def __init__(self, clock=None, time_limit=DEFAULT_TIME_LIMIT, service_handler=None):
        super().__init__({})
        self.clock = clock or _utc_now
        self.time_limit = float(time_limit)
        self.service_handler = service_handler
        helpers = _make_helpers(self._now)
        self.helpers = dict(helpers)
        exec_builtins = dict(_BASE_BUILTINS)
        exec_builtins.update(helpers)
        exec_builtins.update(_GUARDS)
        eval_builtins = dict(exec_builtins)
        exec_builtins['_getattr_'] = _guarded_getattr
        exec_builtins['_write_'] = _guarded_write
        eval_builtins['_getattr_'] = _guarded_getattr_ro
        eval_builtins['_write_'] = _write_refused
        self._exec_builtins = exec_builtins
        self._eval_builtins = eval_builtins

    # -- clock ----------------------------------------------------------

    def _now(self):
        value = self.clock()
        if not isinstance(value, datetime):
            raise SandboxError('the clock did not return a date and time')
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    # -- running --------------------------------------------------------

    def _namespace(self, context, external_context, builtins_dict):
        namespace = {}
        for source in (external_context or {}), (context or {}):
            for key, value in source.items():
                if _visible(key):
                    namespace[key] = value
        namespace['__builtins__'] = builtins_dict
        return namespace

    def _run(self, code, namespace, source, mode):
        budget = _Budget(self.time_limit, self.memory_limit)
        namespace['_tick_'] = budget.tick
        previous = sys.gettrace()
        sys.settrace(budget.trace)
        try:
            if mode == 'eval':
                return eval(code, namespace)
            exec(code, namespace)
            return None
        except _Abort as err:
            raise SandboxError(err.message, err.lineno) from None
        except SandboxError as err:
            if err.lineno is None:
                err.lineno = _script_lineno(err.__traceback__)
            raise err.with_traceback(None) from None
        except RecursionError:
            raise SandboxError('functions are nested too deeply',
                               _script_lineno(sys.exc_info()[2])) from None
        except MemoryError:
            raise SandboxError('the script ran out of memory') from None
        except Exception as err:
            raise _describe(err, source, _script_lineno(err.__traceback__)) from None
        finally:
            sys.settrace(previous)

    def evaluate(self, expression, context, external_context=None):
        """Evaluates an expression against the task data; returns its value."""
        code = _compile(expression, 'eval')
        namespace = self._namespace(context, external_context, self._eval_builtins)
        value = self._run(code, namespace, expression, 'eval')
        _DataMeter(MAX_DATA_BYTES, allow_sets=True).add(value, 'the result')
        return value

    def execute(self, script, context, external_context=None):
        """Runs a script; its variables end up in ``context`` (the task data).

        The script works on a copy: if it fails, ``context`` is unchanged.
        """
        code = _compile(script, 'exec')
        visible = {k: v for k, v in context.items() if _visible(k)}
        external = {k: v for k, v in (external_context or {}).items()
                    if _visible(k) and k not in visible}
        try:
            data = copy.deepcopy(visible)
            external = copy.deepcopy(external)
        except Exception:
            raise SandboxError('the task data cannot be copied for the script') from None
        namespace = self._namespace(data, external, self._exec_builtins)
        self._run(code, namespace, script, 'exec')

        result = {}
        for key, value in namespace.items():
            if not _visible(key) or key in external or callable(value):
                continue
            result[key] = value
        meter = _DataMeter(MAX_DATA_BYTES)
        for key, value in context.items():
            if not _visible(key):
                meter.add_lenient(value, 'the task data')
        for key, value in result.items():
            meter.add(value, f"variable '{key}'")

        for key in [k for k in context if _visible(k) and k not in result]:
            del context[key]
        context.update(result)
        return True

    def call_service(self, context, operation_name=None, operation_params=None,
                     task_data=None, **kwargs):
        """Calls ``service_handler(operation_name, params, context)``.

        ``operation_params`` come from SpiffWorkflow's service task already
        evaluated in the sandbox: ``{'name': {'value': v, 'type': t}}``; the
        handler receives ``{'name': v}``.  The result must be JSON text (or
        data that is turned into JSON text) of at most 256 KiB.
        """
        if self.service_handler is None:
            raise SandboxError('service tasks are not available: no service handler '
                               'is configured')
        if context is None:
            context = task_data if task_data is not None else {}
        params = {}
        for name, param in (operation_params or {}).items():
            params[name] = param.get('value') if isinstance(param, dict) else param
        result = self.service_handler(operation_name, params, context)
        if not isinstance(result, (str, bytes, bytearray)):
            result = json.dumps(result, default=str)
        if len(result) > MAX_DATA_BYTES:
            raise SandboxError(f'the result of service {operation_name!r} is too large '
                               f'(limit: {MAX_DATA_BYTES // 1024} KiB)')
        return result


class SandboxedScriptEngine(PythonScriptEngine):
    """SpiffWorkflow script engine running everything in the sandbox."""

    def __init__(self, clock=None, time_limit=DEFAULT_TIME_LIMIT, service_handler=None):
        super().__init__(environment=SandboxedEnvironment(
            clock=clock, time_limit=time_limit, service_handler=service_handler))

    def validate(self, expression):
        check_script(expression)

    def evaluate(self, task, expression, external_context=None):
        try:
            return self.environment.evaluate(expression, task.data, external_context)
        except SpiffWorkflowException as err:
            err.add_note(f"Error evaluating expression '{expression}'")
            raise err
        except SandboxError as err:
            raise WorkflowTaskException(
                f"Error evaluating expression '{expression}': {err}",
                task=task, exception=err, line_number=err.lineno) from err
        except Exception as err:
            raise WorkflowTaskException(f"Error evaluating expression '{expression}'",
                                        task=task, exception=err) from err

    def call_service(self, task, **kwargs):
        # The base class refers to an undefined name when a call fails.
        try:
            return self.environment.call_service(task.data, **kwargs)
        except SpiffWorkflowException:
            raise
        except SandboxError as err:
            raise WorkflowTaskException(str(err), task=task, exception=err) from err
        except Exception as err:
            name = kwargs.get('operation_name')
            raise WorkflowTaskException(
                f"service {name!r} failed: {type(err).__name__}",
                task=task, exception=err) from err

    def create_task_exec_exception(self, task, script, err):
        if isinstance(err, SandboxError) and not isinstance(err, SpiffWorkflowException):
            line_number, error_line = self.get_error_line_number_and_content(script, err)
            return WorkflowTaskException(err.message, task=task, exception=err,
                                         line_number=line_number, error_line=error_line)
        return super().create_task_exec_exception(task, script, err)

    def get_error_line_number_and_content(self, script, err):
        if isinstance(err, SandboxError):
            lineno = err.lineno or 0
            lines = script.splitlines() if isinstance(script, str) else []
            line = lines[lineno - 1] if 0 < lineno <= len(lines) else ''
            return lineno, line
        return super().get_error_line_number_and_content(script, err)
