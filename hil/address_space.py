# asyncua's generated classes annotate fields with UInt32/Int16/... aliases that plain ints and
# strings satisfy at run time (as for hil.links.opcua and the two servers in pyproject.toml)
# mypy: disable-error-code="arg-type,union-attr"
"""Bulk OPC UA address spaces: tens of thousands of nodes in seconds, folders kept small.

asyncua's ``add_folder`` / ``add_variable`` cost 140-220 us per node even when every folder is
small, and grow quadratic when one folder holds thousands of children (each new child scans the
parent's whole reference list three times). This module builds the same nodes straight into
asyncua's internal :class:`~asyncua.server.address_space.AddressSpace` (``NodeData``,
``AttributeValue``, ``ReferenceDescription``), without the per-node checks of ``add_nodes``:

- the logical tree comes from each variable's browse path (folders are created once, in order of
  first appearance);
- a folder with more than ``max_children`` children gets grouping folders (FolderType,
  ``Organizes``) in between: first one per bay type (the ``group`` of the variables below a child)
  when there are several, then ranges named ``"<first> .. <last>"`` of at most ``max_children``,
  nested as deep as needed. A folder within the bound keeps its children directly, so a small map
  browses exactly as before; only an overfull folder's browse paths change. Node ids never
  change: a variable keeps the node id it was given, a logical folder keeps the id made from its
  path, grouping folders get ids of their own (``<parent id>/~<group>``).
- attributes that are equal for many nodes are one shared ``AttributeValue`` (node class, masks,
  data type, access levels, value rank, the browse/display names of equal leaf names, the
  engineering-units value per unit, the inverse reference to a parent, the type-definition
  reference); a node owns only its node id, its Value and its parent's forward reference to it.
  Shared attributes are safe because every session of our servers is a plain ``UserRole.User``:
  asyncua refuses their writes to any attribute but Value, and Value is never shared for points.

The nodes answer Read, Write, Browse, TranslateBrowsePathsToNodeIds and data-change subscriptions
like asyncua's own (asyncua 2.1 internals; checked by ``tests/hil/test_address_space.py``).

Building yields to the event loop every ``chunk`` nodes (so SIGTERM / Ctrl-C handlers run and
the build can be cancelled) and reports ``progress(done, total)``; the progress hook can also be
set for a whole start-up with :func:`report_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData

_log = logging.getLogger(__name__)

#: Most children a node of ours gets (folders, objects); variables have a few properties.
DEFAULT_MAX_CHILDREN = 256

Progress = Callable[[int, int], None]
_PROGRESS: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "gridtwin_address_space_progress", default=None
)

_A = ua.AttributeIds
_ORGANIZES = ua.NodeId(ua.ObjectIds.Organizes)
_HAS_COMPONENT = ua.NodeId(ua.ObjectIds.HasComponent)
_HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)
_HAS_TYPEDEF = ua.NodeId(ua.ObjectIds.HasTypeDefinition)
_FOLDER_TYPE = ua.NodeId(ua.ObjectIds.FolderType)
_OBJECT_TYPE = ua.NodeId(ua.ObjectIds.BaseObjectType)
_VARIABLE_TYPE = ua.NodeId(ua.ObjectIds.BaseDataVariableType)
_PROPERTY_TYPE = ua.NodeId(ua.ObjectIds.PropertyType)
_EU_DATATYPE = ua.NodeId(ua.ObjectIds.EUInformation)
_NULL_ID = ua.NodeId()


@contextlib.contextmanager
def report_progress(callback: Progress | None) -> Iterator[None]:
    """Send the progress of every build in this context (task) to ``callback(done, total)``."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@dataclass(frozen=True, slots=True)
class Variable:
    """One variable to create.

    Args:
        path: browse names from below the root to the variable (folders..., leaf).
        node_id: its node id (kept as given).
        value: its initial DataValue (owned by this node's Value attribute).
        vtype: its variant type (gives DataType).
        access: AccessLevel bits; user_access: UserAccessLevel bits.
        units: an EngineeringUnits property (shared per unit) or None.
        group: its bay type ("bus", "line", ...), used to group an overfull folder ("" none).
    """

    path: tuple[str, ...]
    node_id: ua.NodeId
    value: ua.DataValue
    vtype: ua.VariantType
    access: int = ua.AccessLevel.CurrentRead.mask
    user_access: int = ua.AccessLevel.CurrentRead.mask
    units: ua.EUInformation | None = None
    group: str = ""


def _read_node_id(nid: ua.NodeId, attr: ua.AttributeIds) -> ua.DataValue:
    return ua.DataValue(ua.Variant(nid, ua.VariantType.NodeId))


_LAZY_NODE_ID = AttributeValue(None)
_LAZY_NODE_ID.value_callback = _read_node_id


def _read_display_name(node: NodeData) -> ua.LocalizedText:
    av = node.attributes[_A.DisplayName]
    dv = av.value_callback(node.nodeid, _A.DisplayName) if av.value_callback else av.value
    return dv.Value.Value if dv is not None and dv.Value is not None else ua.LocalizedText()


class AddressSpaceError(ValueError):
    """The variables cannot form an address space (a node id used twice, ...)."""


class _Folder:
    __slots__ = ("name", "node_id", "kind", "children", "group")

    def __init__(self, name: str, node_id: ua.NodeId, kind: str, group: str = "") -> None:
        self.name = name
        self.node_id = node_id
        self.kind = kind  # "object" (BaseObjectType) or "folder" (FolderType)
        self.children: list[_Folder | Variable] = []
        self.group = group


def _group_of(child: _Folder | Variable) -> str:
    return child.group


def _name_of(child: _Folder | Variable) -> str:
    return child.name if isinstance(child, _Folder) else child.path[-1]


class BulkBuilder:
    """Builds variables (and their folders) under ``root`` straight into a server's aspace.

    Args:
        server: an initialised ``asyncua.Server`` (``await server.init()`` done).
        ns: namespace index of the folders' and properties' node ids.
        root: the parent node id (default: Objects).
        folder_kind: ``"object"`` (logical folders are BaseObjectType objects, children
            ``HasComponent``, like ``add_object``) or ``"folder"`` (FolderType, ``Organizes``).
        id_prefix: prefix of the logical folders' string ids (``"SS1/BAY"`` -> ``prefix + ...``).
        max_children: the bound of children per node (grouping folders above it; default
            ``DEFAULT_MAX_CHILDREN``).
        chunk: nodes built between two yields to the event loop.
    """

    def __init__(
        self,
        server: Any,
        ns: int,
        *,
        root: ua.NodeId | None = None,
        folder_kind: str = "object",
        id_prefix: str = "",
        max_children: int | None = None,
        chunk: int = 2000,
    ) -> None:
        if max_children is None:
            max_children = DEFAULT_MAX_CHILDREN  # read now: a test may lower it
        if folder_kind not in ("object", "folder"):
            raise AddressSpaceError(
                f"folder_kind: expected 'object' or 'folder', found {folder_kind!r}"
            )
        if max_children < 2:
            raise AddressSpaceError(f"max_children: expected >= 2, found {max_children}")
        self.aspace: AddressSpace = server.iserver.aspace
        self.ns = ns
        self.root = root if root is not None else ua.NodeId(ua.ObjectIds.ObjectsFolder)
        self.folder_kind = folder_kind
        self.id_prefix = id_prefix
        self.max_children = max_children
        self.chunk = max(1, chunk)
        self._vars: list[Variable] = []
        self._node_mgt = server.iserver.node_mgt_service
        self._session = server.iserver.isession
        self._names: dict[str, tuple[AttributeValue, ua.QualifiedName, ua.LocalizedText]] = {}
        self._templates: dict[Any, dict[ua.AttributeIds, AttributeValue]] = {}
        self._typedefs: dict[ua.NodeId, ua.ReferenceDescription] = {}
        self._eu: dict[tuple[str, int], AttributeValue] = {}
        self._used: set[ua.NodeId] = set()
        self._nodes = self.aspace._nodes
        self._stored: dict[int, ua.DataValue] = {}  # id(given value) -> value stored
        self._lazy_text = AttributeValue(None)
        self._lazy_text.value_callback = self._read_text
        #: folders and grouping folders created, with the count of their children
        self.folders: dict[ua.NodeId, int] = {}
        self.nodes_created = 0

    def add(self, var: Variable) -> None:
        """Queue one variable (nothing is created before :meth:`build`)."""
        self._vars.append(var)

    def extend(self, variables: Sequence[Variable]) -> None:
        self._vars.extend(variables)

    # tree ---------------------------------------------------------------------------------
    def _tree(self) -> _Folder:
        root = _Folder("", self.root, "root")
        folders: dict[tuple[str, ...], _Folder] = {(): root}
        var_ids: set[ua.NodeId] = set()
        for v in self._vars:
            if not v.path:
                raise AddressSpaceError(f"node {v.node_id.to_string()}: empty browse path")
            if v.node_id in var_ids or v.node_id in self._nodes:
                raise AddressSpaceError(f"node id {v.node_id.to_string()} used twice")
            var_ids.add(v.node_id)
            folder_path = v.path[:-1]
            known = folders.get(folder_path)
            if known is not None:  # the common case: a sibling made the folders already
                known.children.append(v)
                continue
            parent = root
            for depth in range(1, len(v.path)):
                key = v.path[:depth]
                f = folders.get(key)
                if f is None:
                    nid = ua.NodeId(self.id_prefix + "/".join(key), self.ns)
                    f = folders[key] = _Folder(key[-1], nid, self.folder_kind, v.group)
                    parent.children.append(f)
                parent = f
            parent.children.append(v)
        self._used = set(var_ids)
        for f in folders.values():
            if f is not root:
                f.node_id = self._unique(f.node_id)
        for f in list(folders.values()):
            self._bound(f)
        return root

    def _unique(self, nid: ua.NodeId) -> ua.NodeId:
        """``nid``, or ``nid#2``, ``nid#3`` ... when a node of ours already has it."""
        out, n = nid, 1
        while out in self._used or out in self._nodes:
            n += 1
            out = ua.NodeId(str(nid.Identifier) + f"#{n}", nid.NamespaceIndex)
        self._used.add(out)
        return out

    def _bound(self, folder: _Folder) -> None:
        kids = folder.children
        bound = self.max_children
        if len(kids) <= bound:
            return
        base = str(folder.node_id.Identifier) if folder.kind != "root" else self.id_prefix
        groups: dict[str, list[_Folder | Variable]] = {}
        for c in kids:
            groups.setdefault(_group_of(c), []).append(c)
        if len(groups) > 1 and len(groups) <= bound:
            new: list[_Folder | Variable] = []
            for g, members in groups.items():
                gf = _Folder(
                    g or "other",
                    self._unique(ua.NodeId(f"{base}/~{g or 'other'}", self.ns)),
                    "folder",
                    g,
                )
                gf.children = members
                self._bound(gf)
                new.append(gf)
            folder.children = new
            return
        folder.children = self._ranges(kids, base)

    def _ranges(self, kids: list[_Folder | Variable], base: str) -> list[_Folder | Variable]:
        bound = self.max_children
        size = bound
        while -(-len(kids) // size) > bound:
            size *= bound
        out: list[_Folder | Variable] = []
        for i in range(0, len(kids), size):
            part = kids[i : i + size]
            name = f"{_name_of(part[0])} .. {_name_of(part[-1])}"
            gf = _Folder(name, self._unique(ua.NodeId(f"{base}/~{name}", self.ns)), "folder")
            gf.children = self._ranges(part, f"{base}/~{name}") if len(part) > bound else part
            out.append(gf)
        return out

    # shared attributes ------------------------------------------------------------------------
    def _name_attrs(self, name: str) -> tuple[AttributeValue, ua.QualifiedName, ua.LocalizedText]:
        """BrowseName attribute (shared by nodes of the same name), its name and display text."""
        got = self._names.get(name)
        if got is None:
            qname = ua.QualifiedName(name, self.ns)
            got = self._names[name] = (
                AttributeValue(ua.DataValue(ua.Variant(qname, ua.VariantType.QualifiedName))),
                qname,
                ua.LocalizedText(name),
            )
        return got

    def _template(self, key: Any, item: ua.AddNodesItem) -> dict[ua.AttributeIds, AttributeValue]:
        """The attributes asyncua's add_nodes would give ``item``, built once per ``key``."""
        got = self._templates.get(key)
        if got is None:
            scratch = NodeData(item.RequestedNewNodeId)
            self._node_mgt._add_node_attributes(scratch, item, add_timestamps=False)
            got = self._templates[key] = scratch.attributes
            # attributes made from the node id / browse name when read (shared, never stored)
            got[_A.NodeId] = _LAZY_NODE_ID
            got[_A.DisplayName] = self._lazy_text
            got[_A.Description] = self._lazy_text
        return got

    def _object_attrs(self, kind: str) -> dict[ua.AttributeIds, AttributeValue]:
        got = self._templates.get(("object", kind))
        if got is not None:
            return got
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = ua.NodeId("template", self.ns)
        item.BrowseName = ua.QualifiedName("template", self.ns)
        item.NodeClass = ua.NodeClass.Object
        attrs = ua.ObjectAttributes()
        attrs.EventNotifier = 0
        attrs.Description = ua.LocalizedText("template")
        attrs.DisplayName = ua.LocalizedText("template")
        attrs.WriteMask = 0
        attrs.UserWriteMask = 0
        item.NodeAttributes = attrs
        return self._template(("object", kind), item)

    def _variable_attrs(
        self,
        vtype: ua.VariantType,
        access: int,
        user_access: int,
        array: bool,
        datatype: ua.NodeId | None = None,
    ) -> dict[ua.AttributeIds, AttributeValue]:
        key = ("variable", vtype, access, user_access, array, datatype)
        got = self._templates.get(key)
        if got is not None:
            return got
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = ua.NodeId("template", self.ns)
        item.BrowseName = ua.QualifiedName("template", self.ns)
        item.NodeClass = ua.NodeClass.Variable
        attrs = ua.VariableAttributes()
        attrs.Description = ua.LocalizedText("template")
        attrs.DisplayName = ua.LocalizedText("template")
        attrs.DataType = datatype or ua.NodeId(getattr(ua.ObjectIds, vtype.name))
        attrs.Value = ua.Variant([], vtype) if array else ua.Variant()
        if not array:
            attrs.ValueRank = ua.ValueRank.Scalar
            attrs.ArrayDimensions = None  # type: ignore[assignment]
        attrs.WriteMask = 0
        attrs.UserWriteMask = 0
        attrs.Historizing = False
        attrs.AccessLevel = access
        attrs.UserAccessLevel = user_access
        item.NodeAttributes = attrs
        return self._template(key, item)

    def _typedef_ref(self, typedef: ua.NodeId) -> ua.ReferenceDescription:
        ref = self._typedefs.get(typedef)
        if ref is None:
            ref = ua.ReferenceDescription()
            ref.ReferenceTypeId = _HAS_TYPEDEF
            ref.IsForward = True
            ref.NodeId = typedef
            tnode = self.aspace.get(typedef)
            if tnode is not None:
                ref.NodeClass = tnode.attributes[_A.NodeClass].value.Value.Value
                ref.BrowseName = tnode.attributes[_A.BrowseName].value.Value.Value
                ref.DisplayName = tnode.attributes[_A.DisplayName].value.Value.Value
            self._typedefs[typedef] = ref
        return ref

    def _read_text(self, nid: ua.NodeId, attr: ua.AttributeIds) -> ua.DataValue:
        node = self._nodes.get(nid)
        bn = node.attributes[_A.BrowseName].value if node is not None else None
        name = bn.Value.Value.Name if bn is not None and bn.Value is not None else ""
        return ua.DataValue(ua.Variant(ua.LocalizedText(name), ua.VariantType.LocalizedText))

    # nodes ---------------------------------------------------------------------------------
    def _node(
        self,
        nid: ua.NodeId,
        name: str,
        template: dict[ua.AttributeIds, AttributeValue],
        nodeclass: ua.NodeClass,
        typedef: ua.NodeId,
        parent: NodeData,
        parent_ref: ua.ReferenceDescription,
        reftype: ua.NodeId,
    ) -> NodeData:
        node = NodeData(nid)
        attrs = template.copy()
        bname, qname, text = self._name_attrs(name)
        attrs[_A.BrowseName] = bname
        node.attributes = attrs
        node.references = [parent_ref, self._typedef_ref(typedef)]
        parent.references.append(
            ua.ReferenceDescription(
                ReferenceTypeId=reftype,
                IsForward=True,
                NodeId=nid,
                BrowseName=qname,
                DisplayName=text,
                NodeClass=nodeclass,
                TypeDefinition=typedef,
            )
        )
        self._nodes[nid] = node
        self.nodes_created += 1
        return node

    def _inverse(self, node: NodeData, reftype: ua.NodeId) -> ua.ReferenceDescription:
        """The child -> parent reference, one object shared by all children of ``node``."""
        typedef = _NULL_ID
        for r in node.references:
            if r.IsForward and r.ReferenceTypeId == _HAS_TYPEDEF:
                typedef = r.NodeId
                break
        qname = node.attributes[_A.BrowseName].value.Value.Value
        named = self._names.get(qname.Name)
        text = named[2] if named is not None else _read_display_name(node)
        return ua.ReferenceDescription(
            ReferenceTypeId=reftype,
            IsForward=False,
            NodeId=node.nodeid,
            NodeClass=node.attributes[_A.NodeClass].value.Value.Value,
            BrowseName=qname,
            DisplayName=text,
            TypeDefinition=typedef,
        )

    def _eu_value(self, eu: ua.EUInformation) -> AttributeValue:
        key = (eu.DisplayName.Text or "", eu.UnitId)
        av = self._eu.get(key)
        if av is None:
            av = self._eu[key] = AttributeValue(
                ua.DataValue(ua.Variant(eu, ua.VariantType.ExtensionObject))
            )
        return av

    def total(self) -> int:
        """Nodes :meth:`build` will create (an estimate before the tree exists)."""
        return len(self._vars) + sum(1 for v in self._vars if v.units is not None)

    async def build(self, progress: Progress | None = None) -> dict[ua.NodeId, NodeData]:
        """Create every queued variable and its folders; returns the variables' NodeData.

        Yields to the event loop every ``chunk`` nodes (cancellable there) and calls
        ``progress(done, total)`` then (and once at the end); ``progress`` defaults to the hook
        set by :func:`report_progress`.
        """
        progress = progress if progress is not None else _PROGRESS.get()
        # hundreds of thousands of new objects, none of them garbage: the cyclic collector
        # would scan them again and again (half the build time at 90k points)
        paused = gc.isenabled()
        gc.disable()
        try:
            return await self._build(progress)
        finally:
            if paused:
                gc.enable()

    async def _build(self, progress: Progress | None) -> dict[ua.NodeId, NodeData]:
        rootdata = self.aspace.get(self.root)
        if rootdata is None:
            raise AddressSpaceError(
                f"root node {self.root.to_string()} is not in the address space"
            )
        tree = self._tree()
        n_folders = 0
        stack_count: list[_Folder] = [tree]
        while stack_count:
            f = stack_count.pop()
            for c in f.children:
                if isinstance(c, _Folder):
                    n_folders += 1
                    stack_count.append(c)
        total = n_folders + self.total()
        done_at_yield = 0
        out: dict[ua.NodeId, NodeData] = {}
        root_is_folder = self._is_folder(rootdata)
        # depth-first, children in order; a stack of (folder, its NodeData, child reftype)
        stack: list[tuple[_Folder, NodeData, bool]] = [(tree, rootdata, root_is_folder)]
        while stack:
            folder, fdata, is_folder = stack.pop()
            self.folders[fdata.nodeid] = len(folder.children)
            reftype = _ORGANIZES if is_folder else _HAS_COMPONENT
            inverse = self._inverse(fdata, reftype)
            pending: list[tuple[_Folder, NodeData, bool]] = []
            for child in folder.children:
                if isinstance(child, _Folder):
                    kind = child.kind
                    typedef = _FOLDER_TYPE if kind == "folder" else _OBJECT_TYPE
                    cdata = self._node(
                        child.node_id,
                        child.name,
                        self._object_attrs(kind),
                        ua.NodeClass.Object,
                        typedef,
                        fdata,
                        inverse,
                        reftype,
                    )
                    pending.append((child, cdata, kind == "folder"))
                else:
                    out[child.node_id] = self._variable(child, fdata, inverse)
                if self.nodes_created - done_at_yield >= self.chunk:
                    done_at_yield = self.nodes_created
                    if progress is not None:
                        progress(self.nodes_created, total)
                    await asyncio.sleep(0)
            stack.extend(reversed(pending))
        if progress is not None:
            progress(self.nodes_created, total)
        _log.debug("bulk address space: %d nodes under %s", self.nodes_created, self.root)
        return out

    async def build_node_by_node(self) -> None:
        """The same nodes through asyncua's public API (add_object / add_variable ...).

        The reference the bulk build is compared with (tests, ``bench/emulator.py``): same
        tree, node ids, attributes and references, at asyncua's per-node cost.
        """
        from asyncua import Node

        tree = self._tree()
        server_node = Node(self._session, self.root)
        stack: list[tuple[_Folder, Any]] = [(tree, server_node)]
        while stack:
            folder, parent = stack.pop()
            pending = []
            for child in folder.children:
                if isinstance(child, _Folder):
                    qn = ua.QualifiedName(child.name, self.ns)
                    if child.kind == "folder":
                        node = await parent.add_folder(child.node_id, qn)
                    else:
                        node = await parent.add_object(child.node_id, qn)
                    pending.append((child, node))
                    continue
                v = child
                var = await parent.add_variable(
                    v.node_id,
                    ua.QualifiedName(v.path[-1], self.ns),
                    v.value.Value if v.value.Value is not None else ua.Variant(),
                    varianttype=v.vtype,
                )
                if v.access & ua.AccessLevel.CurrentWrite.mask:
                    await var.set_attr_bit(ua.AttributeIds.AccessLevel, ua.AccessLevel.CurrentWrite)
                if v.user_access & ua.AccessLevel.CurrentWrite.mask:
                    await var.set_attr_bit(
                        ua.AttributeIds.UserAccessLevel, ua.AccessLevel.CurrentWrite
                    )
                if v.units is not None:
                    await var.add_property(
                        self.ns,
                        "EngineeringUnits",
                        v.units,
                        varianttype=ua.VariantType.ExtensionObject,
                        datatype=ua.ObjectIds.EUInformation,
                    )
                await self.aspace.write_attribute_value(v.node_id, _A.Value, v.value)
                self.nodes_created += 1
            stack.extend(reversed(pending))

    @staticmethod
    def _is_folder(data: NodeData) -> bool:
        return any(
            r.IsForward and r.ReferenceTypeId == _HAS_TYPEDEF and r.NodeId == _FOLDER_TYPE
            for r in data.references
        )

    def _variable(
        self, v: Variable, parent: NodeData, inverse: ua.ReferenceDescription
    ) -> NodeData:
        value = v.value.Value
        array = value is not None and isinstance(value.Value, list | tuple)
        template = self._variable_attrs(v.vtype, v.access, v.user_access, array)
        node = self._node(
            v.node_id,
            v.path[-1],
            template,
            ua.NodeClass.Variable,
            _VARIABLE_TYPE,
            parent,
            inverse,
            _HAS_COMPONENT,
        )
        dv = self._stored.get(id(v.value))
        if dv is None:
            dv = v.value
            if dv.StatusCode is not None and dv.StatusCode.is_bad() and dv.Value is not None:
                # as asyncua's write: a bad status carries no value (Part 4, 7.7.1)
                dv = dataclasses.replace(dv, Value=ua.Variant(None, ua.VariantType.Null))
            self._stored[id(v.value)] = dv
        node.attributes[_A.Value] = AttributeValue(dv)
        if v.units is not None:
            base = v.node_id
            pid = self._unique(
                ua.NodeId(str(base.Identifier) + "/EngineeringUnits", base.NamespaceIndex)
                if base.NodeIdType == ua.NodeIdType.String
                else self.aspace.generate_nodeid(self.ns)
            )
            eu_template = self._variable_attrs(
                ua.VariantType.ExtensionObject,
                ua.AccessLevel.CurrentRead.mask,
                ua.AccessLevel.CurrentRead.mask,
                False,
                _EU_DATATYPE,
            )
            prop = self._node(
                pid,
                "EngineeringUnits",
                eu_template,
                ua.NodeClass.Variable,
                _PROPERTY_TYPE,
                node,
                ua.ReferenceDescription(  # to its variable, whose names we know
                    ReferenceTypeId=_HAS_PROPERTY,
                    IsForward=False,
                    NodeId=v.node_id,
                    NodeClass=ua.NodeClass.Variable,
                    BrowseName=self._name_attrs(v.path[-1])[1],
                    DisplayName=self._name_attrs(v.path[-1])[2],
                    TypeDefinition=_VARIABLE_TYPE,
                ),
                _HAS_PROPERTY,
            )
            prop.attributes[_A.Value] = self._eu_value(v.units)
        return node


def max_children(aspace: AddressSpace, ns: int) -> int:
    """The largest number of forward hierarchical references of a node in namespace ``ns``."""
    hier = {_ORGANIZES, _HAS_COMPONENT, _HAS_PROPERTY}
    worst = 0
    for nid in list(aspace.keys()):
        if nid.NamespaceIndex != ns:
            continue
        n = sum(1 for r in aspace[nid].references if r.IsForward and r.ReferenceTypeId in hier)
        worst = max(worst, n)
    return worst


# --- the two servers' address spaces ---------------------------------------------------------
_READ = ua.AccessLevel.CurrentRead.mask
_READ_WRITE = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.CurrentWrite.mask


async def build_point_nodes(
    server: Any,
    ns: int,
    store: Any,
    node_of: dict[str, ua.NodeId],
    vtypes: dict[str, ua.VariantType],
    samples: dict[str, Any] | None = None,
    *,
    max_children: int | None = None,
    progress: Progress | None = None,
) -> dict[ua.NodeId, Any]:
    """The emulator's point nodes: every point with an OPC UA binding, under Objects.

    Node ids are the point map's (namespace index replaced by ``ns``); the browse path is the
    point map's, with grouping folders only where a folder would exceed ``max_children``.
    Fills ``node_of`` (point name -> node id), ``vtypes`` and ``samples`` (the store's Sample
    each node's value was made from: ``store.get(name) is not samples[name]`` later means it
    changed since); returns node id -> Point.

    AccessLevel says what anyone might write (the plant writes measurements); UserAccessLevel
    advertises the ordinary operator's view. The emulator's guarded AttributeService enforces
    the real per-role rule.
    """
    from hil.emulator.opcua_server import _eu_information, data_value, variant_type

    builder = BulkBuilder(server, ns, folder_kind="object", max_children=max_children)

    nodes: dict[ua.NodeId, Any] = {}
    units: dict[str, ua.EUInformation] = {}
    values: dict[tuple[Any, ...], ua.DataValue] = {}
    for point in store.pointmap.points:
        if point.opcua is None:
            continue
        text = point.opcua.node_id
        if text.startswith("ns=") and ";s=" in text[:8]:  # the common case, parsed quickly
            nid = ua.NodeId(text[text.index(";s=") + 3 :], ns)
        else:
            nid = ua.NodeId.from_string(text)
            if nid.NamespaceIndex != ns:
                nid = ua.NodeId(nid.Identifier, ns, nid.NodeIdType)
        vtype = variant_type(point)
        sample = store.get(point.name)
        if samples is not None:
            samples[point.name] = sample
        # a fresh store holds the same sample everywhere: one DataValue per type (asyncua
        # replaces a node's DataValue on write, never changes it in place)
        vkey = (sample.value, sample.quality, sample.timestamp, vtype)
        dv = values.get(vkey)
        if dv is None:
            dv = values[vkey] = data_value(sample, vtype)
        eu = None
        if point.kind == "measurement" or point.unit:
            eu = units.get(point.unit)
            if eu is None:
                eu = units[point.unit] = _eu_information(point.unit)
        user = _READ_WRITE if point.kind in ("command", "setpoint") else _READ
        builder.add(
            Variable(
                path=tuple(point.opcua.browse_path),
                node_id=nid,
                value=dv,
                vtype=vtype,
                access=_READ_WRITE,
                user_access=user,
                units=eu,
                group=point.table,
            )
        )
        nodes[nid] = point
        node_of[point.name] = nid
        vtypes[point.name] = vtype
    await builder.build(progress)
    return nodes
